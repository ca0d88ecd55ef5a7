"""System tests: real namespaces, mounts, loop devices and daemons, as root.

After the whole system suite, nothing a lab of this session made may remain: no namespace,
cgroup, loop device, process or directory with a lab prefix. Labs another process owns and
that is still running (a developer's detached lab, a parallel run) are left alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifekit.lab import _clean, _state, _sys


def _foreign(lab_id: str, before: set[str]) -> bool:
    """A lab this session did not make: there before it, or owned by another live process."""
    if lab_id in before:
        return True
    state = _state.read_state(_state.base_dir() / lab_id)
    owner = state.get("owner") if state else None
    return owner is not None and owner[0] != os.getpid() and _sys.alive(*owner)


def _ours_or_orphaned(before: set[str]) -> dict[str, list[str]]:
    """Leftovers of labs this session made: its own, detached ones (the CLI's) and orphans."""
    return {
        lab_id: objects
        for lab_id, objects in _clean.leftovers().items()
        if not _foreign(lab_id, before)
    }


def _machine_traces(links_before: set[str], before: set[str]) -> list[str]:
    """Lab traces in this machine's own namespaces: new links, mounts of this session's labs
    (other than the netns files, which the leftover check already covers)."""
    traces = [f"link {name}" for name in _links() - links_before]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        found = re.search(r"lklab-[a-z0-9]+", line)
        outside_netns = not mount_point.startswith("/run/netns/")
        if found and outside_netns and not _foreign(found.group(0), before):
            traces.append(f"mount {mount_point}")
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
    traces = _machine_traces(links_before, before)
    if traces:
        left["this machine's namespaces"] = traces
    if left:
        pytest.fail(f"labs left objects behind after the suite: {left}", pytrace=False)
