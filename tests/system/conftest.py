"""System tests: real namespaces, mounts, loop devices and daemons, as root.

After the whole system suite, nothing a lab of this session made may remain: no namespace,
cgroup, loop device, process or directory with a lab prefix. Labs another process owns and
that is still running (a developer's detached lab, a parallel run) are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifekit.lab import _clean, _state, _sys


def _ours_or_orphaned(before: set[str]) -> dict[str, list[str]]:
    """Leftovers of labs this session made: its own, detached ones (the CLI's) and orphans."""
    found = {}
    for lab_id, objects in _clean.leftovers().items():
        if lab_id in before:
            continue
        state = _state.read_state(_state.base_dir() / lab_id)
        owner = state.get("owner") if state else None
        someone_elses = owner is not None and owner[0] != os.getpid() and _sys.alive(*owner)
        if not someone_elses:
            found[lab_id] = objects
    return found


def _machine_traces(links_before: set[str]) -> list[str]:
    """Lab traces in this machine's own namespaces: new links, lab mounts."""
    traces = [f"link {name}" for name in _links() - links_before]
    traces += [
        f"mount {line.split()[4]}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if "lklab-" in line or "lifekit-lab" in line
    ]
    return traces


def _links() -> set[str]:
    return {path.name for path in Path("/sys/class/net").iterdir()}


@pytest.fixture(autouse=True)
def _root_or_skip(request: pytest.FixtureRequest) -> None:
    """Tests marked ``root`` skip without root, saying so; under CI they fail instead."""
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this system test needs root, and CI must run it as root")
        pytest.skip("needs root (network namespaces, mounts, loop devices)")


@pytest.fixture(scope="session", autouse=True)
def _no_lab_leftovers() -> Iterator[None]:
    if os.geteuid() != 0:
        yield
        return
    before = set(_clean.leftovers())
    links_before = _links()
    yield
    left: dict[str, object] = dict(_ours_or_orphaned(before))
    for lab_id in left:
        _clean.teardown(lab_id, _state.base_dir() / lab_id)
    traces = _machine_traces(links_before)
    if traces:
        left["this machine's namespaces"] = traces
    if left:
        pytest.fail(f"labs left objects behind after the suite: {left}", pytrace=False)
