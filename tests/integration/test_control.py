"""The control socket for real: status over a Unix socket, permissions, hostile input."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import anyio
import pytest

from lifekit import Policy, Resource, Result, State, build_model
from lifekit._registry import KitRegistry
from lifekit._runtime import Node, RecordingPowerControl
from lifekit._runtime._control import MAX_REQUEST, control_request, serve_control
from lifekit.errors import ControlError
from lifekit.kit import ActionContext, Kit
from tests.fixtures.support import exploding_result, raw_control_request

pytestmark = pytest.mark.anyio


class FlagKit(Kit):
    kind = "flag"
    description = "a set of names"

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.broken_result: Result | None = None

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        self.up.add(resource.tag)
        return Result.ok()

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        self.up.discard(resource.tag)
        return Result.ok()

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        if self.broken_result is not None:
            return self.broken_result
        return Result.ok() if resource.tag in self.up else Result.not_running()


def _model():
    policy = Policy(quickcheck_interval=0.05)
    return build_model(
        [
            Resource("a", "flag", policy=policy),
            Resource("b", "flag", depends_on=["a"], policy=policy),
        ],
        default_nodes=["n1"],
    )


async def test_status_and_requests_over_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "run" / "lifekit.sock"
    kit = FlagKit()
    async with Node(_model(), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as node:
        async with anyio.create_task_group() as group:
            await group.start(serve_control, node, path)
            assert (path.stat().st_mode & 0o777) == 0o600
            assert (path.parent.stat().st_mode & 0o777) == 0o700
            await control_request(path, {"op": "in_service", "root": "b"})
            await node.wait_until(lambda s: s.hierarchies["b"].state is State.ISP, timeout=10)
            document = await control_request(path, {"op": "status"})
            assert document["status_version"] == 1
            assert document["hierarchies"][0]["root"] == "b"
            assert [r["tag"] for r in document["hierarchies"][0]["resources"]] == ["b", "a"]
            with pytest.raises(ControlError, match="must name a hierarchy"):
                await control_request(path, {"op": "in_service", "root": "nope"})
            group.cancel_scope.cancel()
    assert not path.exists()


async def test_hostile_input_gets_an_error_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "lifekit.sock"
    kit = FlagKit()
    async with Node(_model(), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as node:
        async with anyio.create_task_group() as group:
            await group.start(serve_control, node, path)
            await node.wait_until(
                lambda s: all(r.state is not State.UNKNOWN for r in s.resources.values()),
                timeout=10,
            )
            before = node.snapshot()
            cases = [
                b"not json\n",
                b"[1, 2]\n",
                b'{"op": "reboot"}\n',
                b'{"op": "in_service", "root": 5}\n',
                b'{"op": "status", "version": 99}\n',
                b"x" * (MAX_REQUEST + 10) + b"\n",
            ]
            for payload in cases:
                response = await anyio.to_thread.run_sync(raw_control_request, path, payload)
                assert response["ok"] is False, payload[:40]
                assert response["error"]
            after = node.snapshot()
            assert after.resources == before.resources
            assert kit.up == set()
            group.cancel_scope.cancel()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
async def test_other_users_are_refused_even_if_the_file_mode_allows(tmp_path: Path) -> None:
    # pytest's own tmp_path sits under a 0700 directory; this one must be reachable by uid 65534.
    shared = Path(tempfile.mkdtemp(prefix="lifekit-control-"))
    shared.chmod(0o755)
    path = shared / "lifekit.sock"
    kit = FlagKit()
    async with Node(_model(), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path / "s") as node:
        async with anyio.create_task_group() as group:
            await group.start(serve_control, node, path)
            os.chmod(path, 0o666)  # only the peer-credential check stands in the way now
            script = (
                "import json, socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                f"s.connect({str(path)!r})\n"
                's.sendall(b\'{"op": "in_service", "root": "b"}\\n\')\n'
                "print(s.recv(65536).decode())\n"
            )
            result = await anyio.run_process(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                    script,
                ],
                check=False,
            )
            assert result.returncode == 0, result.stderr
            response = json.loads(result.stdout)
            assert response["ok"] is False
            assert "permission denied: uid 65534" in response["error"]
            await anyio.sleep(0.2)
            assert node.snapshot().hierarchies["b"].wanted_in_service is None
            group.cancel_scope.cancel()
    shutil.rmtree(shared)


async def test_a_second_server_on_a_live_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lifekit.sock"
    async with Node(_model(), name="n1", kits=KitRegistry([FlagKit()]), state_dir=tmp_path) as node:
        async with anyio.create_task_group() as group:
            await group.start(serve_control, node, path)
            with pytest.raises(ControlError, match="already serves"):
                await serve_control(node, path)
            group.cancel_scope.cancel()


async def test_unreachable_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="is `lifekit up` running"):
        await control_request(tmp_path / "missing.sock", {"op": "status"})


async def test_engine_failure_stops_the_node_and_reaches_the_power_seam(tmp_path: Path) -> None:
    kit = FlagKit()
    power = RecordingPowerControl()
    async with Node(
        _model(), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path, power=power
    ) as node:
        assert await node.bring_in_service("b", timeout=10)
        # A result that blows up inside the engine (its reason raises when read) stands in
        # for an engine bug: the engine must poison itself and the node stop acting.
        kit.broken_result = exploding_result()
        await node.wait_until(lambda s: bool(power.requests), timeout=10)
        with pytest.raises(Exception, match="engine failed"):
            node.request_out_of_service("b")
    assert power.requests[0][0] == "engine_failed"
    assert "boom" in power.requests[0][1]


async def test_a_result_with_a_bogus_outcome_is_a_soft_failure_not_a_crash(
    tmp_path: Path,
) -> None:
    kit = FlagKit()
    async with Node(_model(), name="n1", kits=KitRegistry([kit]), state_dir=tmp_path) as node:
        assert await node.bring_in_service("b", timeout=10)
        bogus = Result.ok()
        object.__setattr__(bogus, "outcome", "exploded")  # what a careless kit might build
        kit.broken_result = bogus
        snapshot = await node.wait_until(
            lambda s: s.resources["a"].recent_recoveries >= 1, timeout=10
        )
        assert not node.status()["engine_error"]
        assert snapshot.resources["a"].last_check is not None
