"""The runtime with real tasks on asyncio and trio: ordering, recovery, timeouts, batching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
import anyio.lowlevel
import pytest

from lifekit import (
    HierarchyFailed,
    Policy,
    RecoveryLimit,
    Resource,
    Result,
    State,
    StateChanged,
    Timeouts,
    build_model,
)
from lifekit._registry import KitRegistry
from lifekit._runtime import Node
from lifekit.kit import ActionContext, Kit

pytestmark = pytest.mark.anyio


class MemoryKit(Kit):
    """Resources that are just names in a set; behaviour steerable per tag."""

    kind = "mem"
    description = "in-memory test resources"

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.hang_restore: set[str] = set()

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        self.calls.append(("restore", resource.tag))
        if resource.tag in self.hang_restore:
            await anyio.sleep_forever()
        self.running.add(resource.tag)
        return Result.ok()

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        self.calls.append(("remove", resource.tag))
        self.running.discard(resource.tag)
        return Result.ok()

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        self.calls.append(("quickcheck", resource.tag))
        return Result.ok() if resource.tag in self.running else Result.not_running()


class BatchKit(MemoryKit):
    kind = "batch"

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def quickcheck_many(
        self, resources: Sequence[Resource], ctx: ActionContext
    ) -> Mapping[str, Result]:
        self.batches.append(len(resources))
        return {
            r.tag: Result.ok() if r.tag in self.running else Result.not_running() for r in resources
        }


def _model(kind: str = "mem", policy: Policy | None = None):
    policy = policy or Policy(quickcheck_interval=0.05)
    return build_model(
        [
            Resource("db", kind, policy=policy),
            Resource("ip", kind, policy=policy),
            Resource("web", kind, depends_on=["db", "ip"], policy=policy),
        ],
        default_nodes=["n1"],
    )


async def test_bring_in_service_orders_children_first(tmp_path) -> None:
    kit = MemoryKit()
    async with Node(_model(), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as node:
        assert await node.bring_in_service("web", timeout=10)
        restores = [tag for action, tag in kit.calls if action == "restore"]
        assert restores[-1] == "web"
        assert set(restores[:2]) == {"db", "ip"}
        status = node.status()
        assert status["hierarchies"][0]["state"] == "ISP"
        assert await node.take_out_of_service("web", timeout=10)
        removes = [tag for action, tag in kit.calls if action == "remove"]
        assert removes[0] == "web"
    assert kit.running == set()


async def test_failure_is_detected_and_recovered(tmp_path) -> None:
    kit = MemoryKit()
    async with Node(_model(), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as node:
        assert await node.bring_in_service("web", timeout=10)
        kit.running.discard("db")  # the application died
        await node.wait_until(
            lambda s: (
                s.resources["db"].recent_recoveries == 1 and s.resources["db"].state is State.ISP
            ),
            timeout=10,
        )
        assert "db" in kit.running
        assert ("recover", "db") not in kit.calls  # default recover is restore
        assert kit.calls.count(("restore", "db")) == 2


async def test_escalation_after_limit(tmp_path) -> None:
    policy = Policy(quickcheck_interval=0.05, recovery_limit=RecoveryLimit(1, 60.0))
    kit = MemoryKit()
    async with Node(
        _model(policy=policy), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path
    ) as node:
        assert await node.bring_in_service("web", timeout=10)
        failed: list[HierarchyFailed] = []

        async def watch() -> None:
            async for event in node.events():
                if isinstance(event, HierarchyFailed):
                    failed.append(event)
                    return

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await anyio.lowlevel.checkpoint()
            kit.running.discard("db")
            await node.wait_until(lambda s: s.resources["db"].recent_recoveries == 1, timeout=10)
            await node.wait_until(lambda s: s.resources["db"].state is State.ISP, timeout=10)
            kit.running.discard("db")
        assert failed[0].cause == "db"
        snapshot = await node.wait_until(lambda s: s.resources["db"].state is State.OSF, timeout=10)
        assert "recovery limit" in snapshot.resources["db"].reason
        assert snapshot.hierarchies["web"].state is State.OSF


async def test_restore_timeout_cancels_and_fails(tmp_path) -> None:
    kit = MemoryKit()
    kit.hang_restore.add("ip")
    policy = Policy(quickcheck_interval=5, timeouts=Timeouts(restore=0.2))
    async with Node(
        _model(policy=policy), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path
    ) as node:
        with anyio.fail_after(10):
            assert not await node.bring_in_service("web")
        snapshot = await node.wait_until(lambda s: s.resources["ip"].state is State.OSF, timeout=10)
        assert "timed out" in snapshot.resources["ip"].reason


async def test_quickchecks_of_one_kind_are_batched(tmp_path) -> None:
    kit = BatchKit()
    async with Node(
        _model("batch"), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path
    ) as node:
        assert await node.bring_in_service("web", timeout=10)
        await node.wait_until(lambda s: len(kit.batches) >= 3, timeout=10)
    assert max(kit.batches) == 3


async def test_events_are_ordered_state_changes(tmp_path) -> None:
    kit = MemoryKit()
    seen: list[StateChanged] = []
    async with Node(_model(), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as node:

        async def watch() -> None:
            async for event in node.events():
                if isinstance(event, StateChanged) and event.new is State.ISP:
                    seen.append(event)
                    if event.tag == "web":
                        return

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await anyio.lowlevel.checkpoint()
            node.request_in_service("web")
    assert seen[-1].tag == "web"
    assert {event.tag for event in seen[:2]} == {"db", "ip"}


class FailingKit(MemoryKit):
    kind = "failing"

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        if resource.tag == "ip":
            return Result.hard_failure("no such interface")
        return await super().restore(resource, ctx)


@pytest.mark.parametrize("failover", [True, False])
async def test_bring_in_service_reports_failure_without_waiting_out_a_timeout(
    tmp_path, failover: bool
) -> None:
    kit = FailingKit()
    policy = Policy(quickcheck_interval=5, failover=failover)
    async with Node(
        _model("failing", policy=policy), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path
    ) as node:
        with anyio.fail_after(10):
            assert not await node.bring_in_service("web")
        snapshot = node.snapshot()
        assert snapshot.resources["ip"].state is State.OSF
        assert "no such interface" in snapshot.resources["ip"].reason
        assert not snapshot.resources["web"].state.in_service
        # Taking it out settles too, and leaves nothing in service.
        with anyio.fail_after(10):
            assert await node.take_out_of_service("web")
    assert kit.running == set()
