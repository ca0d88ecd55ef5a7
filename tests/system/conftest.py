"""System tests: real namespaces, mounts, loop devices and daemons, as root.

After the whole system suite, nothing a lab of this session made may remain: no namespace,
cgroup, loop device, process or directory with a lab prefix. Labs another process owns and
that is still running (a developer's detached lab, a parallel run) are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lifekit.lab import _clean, _state, _sys


def _ours_or_orphaned(before: set[str]) -> dict[str, list[str]]:
    found = {}
    for lab_id, objects in _clean.leftovers().items():
        state = _state.read_state(_state.base_dir() / lab_id)
        owner = state.get("owner") if state else None
        mine = owner is not None and owner[0] == os.getpid()
        orphaned = lab_id not in before and (
            not state or (owner is not None and not _sys.alive(owner[0], owner[1]))
        )
        if mine or orphaned:
            found[lab_id] = objects
    return found


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
    yield
    left = _ours_or_orphaned(before)
    if left:
        for lab_id in left:
            _clean.teardown(lab_id, _state.base_dir() / lab_id)
        pytest.fail(f"labs left objects behind after the suite: {left}", pytrace=False)
