"""Node lifecycle edge cases: crashes, re-entry, body errors, a stopped engine, slot waits."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from lifekit import Node, Policy, Resource, Result, State, Timeouts, build_model
from lifekit._registry import KitRegistry
from lifekit._runtime._control import MAX_REQUEST, open_control_listener, serve_control
from lifekit.errors import ControlError, EngineFailed, LifekitError
from lifekit.kit import ActionContext, Kit
from tests.fixtures.support import exploding_result, raw_control_request

pytestmark = pytest.mark.anyio


class SlowKit(Kit):
    kind = "slow"
    description = "restores take `delay` seconds; `explode` raises SystemExit from a check"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.running: set[str] = set()
        self.explode: BaseException | None = None
        self.poison = False

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        await anyio.sleep(self.delay)
        self.running.add(resource.tag)
        return Result.ok()

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        self.running.discard(resource.tag)
        return Result.ok()

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        if self.explode:
            raise self.explode
        if self.poison:
            return exploding_result()
        return Result.ok() if resource.tag in self.running else Result.not_running()


def _flat(count: int, policy: Policy | None = None):
    policy = policy or Policy(quickcheck_interval=0.05)
    return build_model(
        [Resource(f"r{i}", "slow", policy=policy) for i in range(count)], default_nodes=["n1"]
    )


async def test_a_node_cannot_be_entered_twice(tmp_path: Path) -> None:
    node = Node(_flat(1), name="n1", kits=KitRegistry([SlowKit()]), state_dir=tmp_path)
    async with node:
        with pytest.raises(RuntimeError, match="entered only once"):
            await node.__aenter__()
    with pytest.raises(RuntimeError, match="entered only once"):
        async with node:
            pass


async def test_an_error_in_the_body_comes_out_unwrapped(tmp_path: Path) -> None:
    kit = SlowKit()
    with pytest.raises(ValueError, match="user error"):
        async with Node(_flat(2), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as n:
            assert await n.bring_in_service("r0", timeout=10)
            raise ValueError("user error")
    assert kit.running == set()  # and the node still took everything out


class _Crash(BaseException):
    """Not an Exception: nothing in lifekit may swallow it."""


async def test_a_task_crashing_with_a_baseexception_does_not_hang_the_node(
    tmp_path: Path,
) -> None:
    kit = SlowKit()
    with anyio.fail_after(20), pytest.raises(BaseExceptionGroup) as caught:
        async with Node(_flat(1), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as n:
            assert await n.bring_in_service("r0", timeout=10)
            kit.explode = _Crash()
            await anyio.sleep(30)
    assert caught.group_contains(_Crash)


async def test_a_kit_calling_sys_exit_fails_its_action_not_the_node(tmp_path: Path) -> None:
    kit = SlowKit()
    async with Node(_flat(1), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as node:
        assert await node.bring_in_service("r0", timeout=10)
        kit.explode = SystemExit("a kit called sys.exit")
        snapshot = await node.wait_until(
            lambda s: s.resources["r0"].recent_recoveries >= 1, timeout=10
        )
        assert "SystemExit" in snapshot.resources["r0"].last_check.reason
        kit.explode = None
        await node.wait_until(lambda s: s.resources["r0"].state is State.ISP, timeout=10)


async def test_waiters_and_subscribers_learn_that_the_engine_stopped(tmp_path: Path) -> None:
    kit = SlowKit()
    async with Node(_flat(1), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as node:
        assert await node.bring_in_service("r0", timeout=10)
        seen: list[BaseException] = []

        async def subscriber() -> None:
            try:
                async for _ in node.events():
                    pass
            except EngineFailed as exc:
                seen.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(subscriber)
            await anyio.sleep(0.01)
            kit.poison = True
            with anyio.fail_after(10), pytest.raises(EngineFailed):
                await node.wait_until(lambda s: False)
        assert seen
        with pytest.raises(EngineFailed):
            await node.take_out_of_service("r0", timeout=10)


async def test_time_waiting_for_a_slot_does_not_count_against_the_timeout(
    tmp_path: Path,
) -> None:
    # Four restores of 0.4 s, one at a time, each with a 1 s timeout: the last one starts
    # 1.2 s after it was asked for, and must still succeed.
    kit = SlowKit(delay=0.4)
    policy = Policy(quickcheck_interval=60, timeouts=Timeouts(restore=1.0))
    model = build_model(
        [Resource(f"r{i}", "slow", policy=policy) for i in range(4)]
        + [Resource("top", "slow", depends_on=[f"r{i}" for i in range(4)], policy=policy)],
        default_nodes=["n1"],
    )
    async with Node(
        model, name="n1", kits=KitRegistry([kit]), state_dir=tmp_path, max_concurrent_actions=1
    ) as node:
        assert await node.bring_in_service("top", timeout=30)
        assert all(s.state is State.ISP for s in node.snapshot().resources.values())


async def test_requests_during_shutdown_are_refused_clearly(tmp_path: Path) -> None:
    node = Node(_flat(1), name="n1", kits=KitRegistry([SlowKit()]), state_dir=tmp_path)
    async with node:
        pass
    with pytest.raises(LifekitError, match="shutting down"):
        node.request_in_service("r0")


async def test_control_socket_never_removes_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    precious = tmp_path / "lifekit.sock"
    precious.write_text("not a socket")
    with pytest.raises(ControlError, match="is not a socket"):
        await open_control_listener(precious)
    assert precious.read_text() == "not a socket"


async def test_control_socket_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ControlError, match="chmod go-w"):
        await open_control_listener(shared / "lifekit.sock")
    assert not (shared / "lifekit.sock").exists()


async def test_a_request_that_blows_up_the_parser_does_not_stop_the_server(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lifekit.sock"
    async with Node(_flat(1), name="n1", kits=KitRegistry([SlowKit()]), state_dir=tmp_path) as n:
        async with anyio.create_task_group() as group:
            await group.start(serve_control, n, path)
            nested = b"[" * (MAX_REQUEST - 10) + b"\n"  # RecursionError inside json
            answer = await anyio.to_thread.run_sync(raw_control_request, path, nested)
            assert answer["ok"] is False
            status = await anyio.to_thread.run_sync(
                raw_control_request, path, b'{"op": "status"}\n'
            )
            assert status["ok"] is True
            group.cancel_scope.cancel()


async def test_cancelling_the_caller_still_takes_everything_out(tmp_path: Path) -> None:
    # Ctrl-C in a program embedding a node, or a timeout around it: the node's own tasks must
    # outlive that cancellation long enough to take its hierarchies out.
    kit = SlowKit(delay=0.05)
    with anyio.move_on_after(1.0) as scope:
        async with Node(_flat(3), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as n:
            for root in ("r0", "r1", "r2"):
                assert await n.bring_in_service(root, timeout=10)
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert kit.running == set()
