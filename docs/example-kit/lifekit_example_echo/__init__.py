"""lifekit-example-echo: a complete example recovery kit, packaged as a third party would.

It protects a tiny TCP echo server (``echo_server.py`` next to this file): ``restore`` starts
it in the background through the node's host and waits until it echoes, ``remove`` stops it,
``quickcheck`` asks it to echo a line. Every command runs through the host the runtime gives
the kit (``ctx.run`` / ``ctx.host.spawn``), so the kit works unchanged on this machine, on a lab
node with its own network namespace, and under the conformance suite.

``docs/kit-guide.md`` in lifekit's repository walks through this file.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from lifekit.errors import ParamError, ProcessError
from lifekit.kit import (
    ActionContext,
    Kit,
    Outcome,
    Param,
    Resource,
    Result,
    Schema,
    SpawnedProcess,
    Timeouts,
    hookimpl,
)

__all__ = ["EchoKit", "lifekit_kits"]

#: The server program shipped with this package.
SERVER = Path(__file__).with_name("echo_server.py")
#: Seconds between two checks while waiting for a starting server, or a stopping one.
POLL_INTERVAL = 0.02
#: Seconds a stopping server gets after SIGTERM before SIGKILL.
STOP_GRACE = 2.0


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "a TCP port from 1 to 65535"


def _address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "an IPv4 or IPv6 address, e.g. 127.0.0.1"
    return None


class EchoKit(Kit):
    """Keeps a TCP echo server running on a node."""

    kind = "echo"
    description = (
        "A TCP echo server started and watched by lifekit: a small, complete example of a "
        "kit that manages a long-running process."
    )
    schema = Schema(
        [
            Param(
                "port",
                int,
                required=True,
                unique=True,
                check=_port,
                description="the TCP port the server listens on",
            ),
            Param(
                "address",
                str,
                default="127.0.0.1",
                check=_address,
                description="the address the server listens on",
            ),
            Param(
                "command",
                list,
                item_type=str,
                default=[sys.executable, str(SERVER)],
                description="the echo server program's argv (its subcommand is appended)",
            ),
        ]
    )
    default_timeouts = Timeouts(restore=15.0, remove=15.0, quickcheck=5.0, recover=15.0)
    minimum_timeouts = Timeouts(restore=2.0, remove=3.0, quickcheck=1.0, recover=2.0)
    default_quickcheck_interval = 5.0

    def __init__(self) -> None:
        # Handles of the servers this kit started, by tag. The kit object lives as long as the
        # node; servers that outlive it are found again through their pid files.
        self._servers: dict[str, SpawnedProcess] = {}

    def validate(self, tag: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        if not params["command"]:
            raise ParamError(
                tag, "command", params["command"], f"the server's argv, e.g. {[sys.executable]}"
            )
        return params

    # -- quickcheck ------------------------------------------------------------------------

    async def quickcheck(self, resource: Resource, ctx: ActionContext) -> Result:
        results = await self.quickcheck_many([resource], ctx)
        return results[resource.tag]

    async def quickcheck_many(
        self, resources: Sequence[Resource], ctx: ActionContext
    ) -> Mapping[str, Result]:
        # One `check` process per (program, address) answers for every port behind it.
        groups: dict[tuple[tuple[str, ...], str], list[Resource]] = {}
        for resource in resources:
            key = (tuple(resource.params["command"]), resource.params["address"])
            groups.setdefault(key, []).append(resource)
        results: dict[str, Result] = {}
        for (command, address), members in groups.items():
            ports = [str(member.params["port"]) for member in members]
            try:
                checked = await ctx.run([*command, "check", address, *ports])
            except ProcessError as exc:
                # The program is not installed: then no server of it can be running here.
                for member in members:
                    results[member.tag] = Result.not_running(f"cannot run the server: {exc}")
                continue
            if not checked.ok:
                for member in members:
                    results[member.tag] = Result.soft_failure(checked.summary())
                continue
            verdicts = dict(line.split(" ", 1) for line in checked.text.splitlines() if " " in line)
            for member, port in zip(members, ports, strict=True):
                results[member.tag] = _verdict(
                    verdicts.get(port, "broken no answer"), address, port
                )
        return results

    # -- restore ---------------------------------------------------------------------------

    async def restore(self, resource: Resource, ctx: ActionContext) -> Result:
        found = await self.quickcheck(resource, ctx)
        if found.outcome is Outcome.OK:
            return Result.ok("already answering")
        if found.outcome is not Outcome.NOT_RUNNING:
            return Result.hard_failure(f"cannot start: {found.reason}")
        process = self._servers.get(resource.tag)
        if process is None or process.returncode is not None:
            try:
                process = await self._start(resource, ctx)
            except ProcessError as exc:
                return Result.hard_failure(f"cannot start the server: {exc}")
        # Wait until it echoes. No deadline of our own: the runtime cancels us at our timeout.
        while (found := await self.quickcheck(resource, ctx)).outcome is not Outcome.OK:
            if process.returncode is not None:
                self._servers.pop(resource.tag, None)
                log = await _tail(self._log_file(resource, ctx))
                return Result.soft_failure(
                    f"the server exited with status {process.returncode} while starting: {log}"
                )
            await anyio.sleep(POLL_INTERVAL)
        return Result.ok(f"pid {process.pid} answers on port {resource.params['port']}")

    async def _start(self, resource: Resource, ctx: ActionContext) -> SpawnedProcess:
        params = resource.params
        argv = [*params["command"], "serve", params["address"], str(params["port"])]
        # Shielded, and only this: starting returns within milliseconds, and a cancellation
        # landing between "started" and "recorded" would leave a server nobody can stop.
        # Never shield anything that waits.
        with anyio.CancelScope(shield=True):
            process = await ctx.host.spawn(argv, output=self._log_file(resource, ctx))
            self._servers[resource.tag] = process
            await self._pid_file(resource, ctx).write_text(f"{process.pid}\n")
        return process

    # -- remove ----------------------------------------------------------------------------

    async def remove(self, resource: Resource, ctx: ActionContext) -> Result:
        pid_file = self._pid_file(resource, ctx)
        process = self._servers.pop(resource.tag, None)
        stopped = False
        if process is not None:
            await process.stop(grace=STOP_GRACE)
            stopped = True
        elif (pid := await _read_pid(pid_file)) is not None and await self._is_ours(
            pid, resource, ctx
        ):
            # Started by an earlier run of this node, whose handle is gone: signal its group.
            await ctx.run(["kill", "-TERM", "--", f"-{pid}"])
            stopped = True
        await pid_file.unlink(missing_ok=True)
        # A check on a loaded machine can time out ("broken") while the port closes: retry a
        # failure a few times before reporting it (the action's timeout still bounds this).
        retries = 3
        while (found := await self.quickcheck(resource, ctx)).outcome is Outcome.OK or (
            found.is_failure and stopped and retries > 0
        ):
            if not stopped:
                return Result.hard_failure(
                    f"an echo server lifekit did not start answers on port "
                    f"{resource.params['port']}; stop it by hand"
                )
            if found.is_failure:
                retries -= 1
            await anyio.sleep(POLL_INTERVAL)
        if found.is_failure:
            return found
        return Result.ok() if stopped else Result.not_running("was not running")

    async def _is_ours(self, pid: int, resource: Resource, ctx: ActionContext) -> bool:
        # A pid file can outlive its process and the pid be reused: check the command line.
        shown = await ctx.run(["ps", "-o", "args=", "-p", str(pid)])
        expected = f"serve {resource.params['address']} {resource.params['port']}"
        return shown.ok and expected in shown.text

    # -- state files -----------------------------------------------------------------------

    @staticmethod
    def _pid_file(resource: Resource, ctx: ActionContext) -> anyio.Path:
        return anyio.Path(ctx.state_dir) / f"echo-{resource.tag}.pid"

    @staticmethod
    def _log_file(resource: Resource, ctx: ActionContext) -> Path:
        return ctx.state_dir / f"echo-{resource.tag}.log"


def _verdict(verdict: str, address: str, port: str) -> Result:
    if verdict == "ok":
        return Result.ok()
    if verdict == "down":
        return Result.not_running(f"nothing listens on {address}:{port}")
    return Result.soft_failure(f"{address}:{port} does not echo: {verdict.removeprefix('broken ')}")


async def _read_pid(path: anyio.Path) -> int | None:
    try:
        return int((await path.read_text()).strip())
    except (FileNotFoundError, ValueError):
        return None


async def _tail(path: Path, *, lines: int = 3) -> str:
    try:
        text = await anyio.Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"


@hookimpl
def lifekit_kits(node_name: str) -> list[Kit]:
    """The kits this package provides: a fresh object per node."""
    return [EchoKit()]
