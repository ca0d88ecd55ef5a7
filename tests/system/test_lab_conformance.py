"""The conformance suite runs a kit inside a lab node, through the lab's Host."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lifekit_app import AppKit

from lifekit.lab import Lab, LabSpec
from lifekit.testing import run_conformance

pytestmark = [pytest.mark.root, pytest.mark.anyio]

FIXTURES = Path(__file__).parents[2] / "kits" / "app" / "tests" / "fixtures"


@pytest.fixture
def lab(lifekit_lab_factory: object) -> Lab:
    factory = lifekit_lab_factory
    assert callable(factory)
    lab: Lab = factory(LabSpec(nodes=("n1",), networks=("public",), client=False, lun_size=0))
    return lab


async def test_the_host_runs_commands_on_the_node(lab: Lab) -> None:
    host = lab.node("n1").host()
    assert host.name == "n1"
    result = await host.run(["sh", "-c", "hostname; cat /sys/class/net/public/address"])
    assert result.ok
    hostname, mac = result.text.split()
    assert hostname == "n1"
    assert mac.startswith("02:6c:")
    process = await host.spawn(["sleep", "3600"])
    try:
        n1 = lab.node("n1")
        n1.wait_for(lambda: bool(n1.pids("sleep 3600")), timeout=5)
    finally:
        await process.stop()


async def test_the_app_kit_passes_the_conformance_suite_on_a_lab_node(
    lab: Lab, tmp_path: Path
) -> None:
    def lsb(action: str) -> list[str]:
        return [sys.executable, str(FIXTURES / "lsb_app.py"), str(tmp_path / "app.pid"), action]

    missing = str(tmp_path / "not-installed")
    report = await run_conformance(
        AppKit,
        params={
            "mode": "commands",
            "start": lsb("start"),
            "stop": lsb("stop"),
            "check": lsb("status"),
        },
        missing_params={
            "mode": "commands",
            "start": [missing],
            "stop": [missing],
            "check": [missing],
        },
        host=lab.node("n1").host(),
        state_dir=tmp_path / "state",
    )
    assert report.passed, str(report)
    assert lab.node("n1").pids() == []  # every rule cleaned up after itself, on the node
