"""Long timelines in virtual time: trio's MockClock jumps whenever every task is waiting.

The runtime reads time only through anyio, so minutes of schedule run in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import trio.testing

from lifekit import Node, Policy, RecoveryLimit, Resource, Result, State, build_model
from lifekit._registry import KitRegistry
from lifekit.kit import ActionContext, Kit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


class CountingKit(Kit):
    kind = "count"
    description = "counts quickchecks; a tag in `dead` is not running"

    def __init__(self) -> None:
        self.checks = 0
        self.running: set[str] = set()

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        self.running.add(resource.tag)
        return Result.ok()

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        self.running.discard(resource.tag)
        return Result.ok()

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        self.checks += 1
        return Result.ok() if resource.tag in self.running else Result.not_running()


def _node(tmp_path: Path, policy: Policy, kit: CountingKit) -> Node:
    model = build_model([Resource("app", "count", policy=policy)], default_nodes=["n1"])
    return Node(model, name="n1", kits=KitRegistry([kit]), state_dir=tmp_path)


async def test_quickchecks_keep_their_interval_over_100_virtual_seconds(tmp_path: Path) -> None:
    kit = CountingKit()
    async with _node(tmp_path, Policy(quickcheck_interval=10.0), kit) as node:
        assert await node.bring_in_service("app")
        start_checks, start = kit.checks, anyio.current_time()
        await anyio.sleep(100.0)
        elapsed = anyio.current_time() - start
    assert 100.0 <= elapsed < 101.0
    assert kit.checks - start_checks == 10


async def test_recoveries_outside_the_window_do_not_count(tmp_path: Path) -> None:
    kit = CountingKit()
    policy = Policy(quickcheck_interval=5.0, recovery_limit=RecoveryLimit(1, 300.0))
    async with _node(tmp_path, policy, kit) as node:
        assert await node.bring_in_service("app")
        kit.running.clear()
        await node.wait_until(lambda s: s.resources["app"].recent_recoveries == 1)
        await node.wait_until(lambda s: s.resources["app"].state is State.ISP)
        # Ten virtual minutes later the first recovery has left the 300 s window...
        await anyio.sleep(600.0)
        assert node.snapshot().resources["app"].recent_recoveries == 0
        # ...so another failure is recovered locally again instead of escalating.
        kit.running.clear()
        await node.wait_until(lambda s: s.resources["app"].recent_recoveries == 1)
        snapshot = await node.wait_until(lambda s: s.resources["app"].state is State.ISP)
        assert snapshot.hierarchies["app"].failed is None
        # A second failure inside the window escalates.
        kit.running.clear()
        snapshot = await node.wait_until(lambda s: s.resources["app"].state is State.OSF)
        assert (
            "recovery limit reached (1 recovery within 300 s)" in snapshot.resources["app"].reason
        )
