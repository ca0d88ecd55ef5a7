"""lifekit's kit conformance suite, run against the ip kit inside a lab node, IPv4 and IPv6."""

from __future__ import annotations

from pathlib import Path

import pytest
from lifekit_ip import IpKit

from lifekit.lab import Lab
from lifekit.testing import run_conformance

pytestmark = pytest.mark.anyio


# dad = "skip": the rules restore a dozen times each, and DAD's second per restore is
# measured and tested elsewhere (test_lab.py, docs/ip-kit.md).
@pytest.mark.parametrize(
    ("address", "missing"),
    [
        ("10.88.1.50/24", "10.88.1.51/24"),
        ("fd6c:6b00:88:1::50/64", "fd6c:6b00:88:1::51/64"),
    ],
    ids=["ipv4", "ipv6"],
)
async def test_the_ip_kit_passes_the_conformance_suite_on_a_lab_node(
    lab: Lab, tmp_path: Path, address: str, missing: str
) -> None:
    report = await run_conformance(
        IpKit,
        params={"address": address, "interface": "public", "dad": "skip", "announce_count": 2},
        # "The managed program is missing": the interface does not exist on the node.
        missing_params={"address": missing, "interface": "eth9"},
        host=lab.node("n1").host(),
        state_dir=tmp_path / "state",
    )
    assert report.passed, str(report)
    assert lab.node("n1").pids() == []  # every background announcer was stopped
    listing = lab.node("n1").run(["ip", "addr", "show"]).stdout
    assert address.split("/", maxsplit=1)[0] not in listing
