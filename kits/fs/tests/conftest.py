"""Fixtures for the fs kit's tests: both anyio backends, and a harness that drives the kit's
actions on a lab node the way the runtime would (one kit object per node, bounded actions).

Every mount the tests make lives in a node's private mount namespace (under ``/run``), so it
goes with the lab; the harness still removes every resource it restored at teardown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from lifekit_fs import FsKit

from lifekit.kit import ActionContext, NodeContext, Resource, Result
from lifekit.lab import Lab, LabNode

#: Generous bound on one kit action in a test.
ACTION_BOUND = 30.0
#: The mount point every test uses, inside a node's private /run.
MOUNT_POINT = "/run/fs-test"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each anyio test on both backends."""
    return str(request.param)


class Harness:
    """Calls the fs kit's actions on lab nodes, a kit object per node."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        self.lab = lab
        self.tmp_path = tmp_path
        self.kits: dict[str, FsKit] = {}
        self.restored: list[tuple[str, Resource]] = []

    def kit(self, node: str) -> FsKit:
        return self.kits.setdefault(node, FsKit())

    def resource(self, params: Mapping[str, Any], *, tag: str = "data") -> Resource:
        """A resource whose parameters passed the schema and ``validate``, as a config's do."""
        kit = FsKit()
        checked = dict(kit.validate(tag, kit.schema.validate(tag, params)))
        return Resource(tag=tag, kind="fs", params=checked)

    def ctx(self, node: str, tag: str, *, probe: bool = False) -> ActionContext:
        state = self.tmp_path / "state" / node
        state.mkdir(parents=True, exist_ok=True)
        context = NodeContext(
            name=node,
            host=self.lab.node(node).host(),
            state_dir=state,
            log=logging.getLogger(f"test.{node}"),
        )
        return ActionContext(node=context, tag=tag, timeout=ACTION_BOUND, probe=probe)

    async def call(self, node: str, action: str, resource: Resource) -> Result:
        """Run one action on ``node``, bounded as the runtime would bound it."""
        if action == "restore":
            self.restored.append((node, resource))
        with anyio.fail_after(ACTION_BOUND):
            result = await getattr(self.kit(node), action)(resource, self.ctx(node, resource.tag))
        assert isinstance(result, Result), result
        return result

    def mounted(self, node: LabNode, mount_point: str = MOUNT_POINT) -> bool:
        """Whether the node's mountinfo shows something at ``mount_point`` (read from here)."""
        mountinfo = Path(f"/proc/{node.init_pid()}/mountinfo").read_text()
        return any(line.split()[4] == mount_point for line in mountinfo.splitlines())


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Any]:
    """Build a harness for a lab the test made."""
    made: list[Harness] = []

    def make(lab: Lab) -> Harness:
        harness = Harness(lab, tmp_path)
        made.append(harness)
        return harness

    return make
