"""The one process runner: every external command lifekit or a kit runs goes through here.

Rules it enforces: argv lists only (a string is refused, there is never a shell); each command
gets its own session and process group, and a timeout or a cancellation kills the whole group
(SIGTERM, then SIGKILL after a grace period); output is captured up to a bound, and the rest is
drained and counted so a chatty command can neither block nor exhaust memory; every command is
logged with the caller's logger (which carries the resource's tag).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import anyio
import anyio.abc
import attrs

from lifekit.errors import ActionTimeout, ProcessError

__all__ = ["LocalHost", "ProcessResult", "SpawnedProcess", "run_process", "spawn_process"]

_log = logging.getLogger("lifekit.runner")

#: Seconds between SIGTERM and SIGKILL when a command's group is killed.
KILL_GRACE = 1.0
#: Seconds to keep reading output after the command exited, for pipes a background child
#: inherited (a daemon that kept stdout open must not hang the caller).
DRAIN_GRACE = 0.2

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@attrs.frozen
class ProcessResult:
    """A finished command.

    :param argv: what ran.
    :param returncode: its exit status (negative: killed by that signal).
    :param stdout: captured standard output, at most ``max_output`` bytes.
    :param stderr: captured standard error, at most ``max_output`` bytes.
    :param truncated: whether output beyond the bound was dropped.
    :param duration: seconds from start to exit.
    """

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    truncated: bool
    duration: float

    @property
    def ok(self) -> bool:
        """Exit status 0."""
        return self.returncode == 0

    @property
    def text(self) -> str:
        """Standard output as text (undecodable bytes replaced)."""
        return self.stdout.decode(errors="replace")

    @property
    def error_text(self) -> str:
        """Standard error as text (undecodable bytes replaced)."""
        return self.stderr.decode(errors="replace")

    def check(self) -> ProcessResult:
        """Return self if the exit status is 0, else raise :class:`ProcessError`."""
        if not self.ok:
            raise ProcessError(self.argv, self.returncode, self.error_text)
        return self

    def summary(self) -> str:
        """``argv[0]`` and its status, with the last line of stderr: a reason for a Result."""
        tail = self.error_text.strip().splitlines()
        text = f"{self.argv[0]} exited with status {self.returncode}"
        return f"{text}: {tail[-1]}" if tail else text


def _checked_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        raise TypeError(
            f"argv must be a list of strings, never a shell string: got {argv!r}; "
            "write ['prog', 'arg'] instead"
        )
    checked = tuple(argv)
    if not checked or not all(isinstance(arg, str) for arg in checked):
        raise TypeError(f"argv must be a non-empty list of strings, got {argv!r}")
    return checked


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    merged = dict(os.environ)
    merged.update(env)
    return merged


def _kill_group(pid: int, sig: int) -> None:
    # The command runs in its own session, so its pid is its process group id.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _drain(stream: anyio.abc.ByteReceiveStream, chunks: list[bytes], limit: int) -> int:
    """Read ``stream`` to its end, keeping at most ``limit`` bytes; return bytes dropped."""
    kept = dropped = 0
    async for chunk in stream:
        room = limit - kept
        if room > 0:
            chunks.append(chunk[:room])
            kept += min(room, len(chunk))
        dropped += max(0, len(chunk) - max(room, 0))
    return dropped


async def _terminate(process: anyio.abc.Process) -> None:
    """Kill the command's whole group: TERM, then KILL after the grace period; reap it."""
    with anyio.CancelScope(shield=True):
        _kill_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(KILL_GRACE):
            await process.wait()
            return
        _kill_group(process.pid, signal.SIGKILL)
        with anyio.move_on_after(KILL_GRACE * 5):
            await process.wait()


async def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    input: bytes | None = None,
    max_output: int = 65536,
    log: Log | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion on this machine.

    :param env: variables added to (or replacing) the current environment.
    :param timeout: seconds; past it the process group is killed and
        :class:`~lifekit.errors.ActionTimeout` raised.
    :param input: bytes written to its standard input (otherwise stdin is /dev/null).
    :param max_output: bytes kept of each of stdout and stderr.
    :raises ProcessError: the command could not be started.
    :raises ActionTimeout: it ran past ``timeout``.
    """
    args = _checked_argv(argv)
    logger = log or _log
    logger.debug("running %s", args)
    start = anyio.current_time()
    try:
        process = await anyio.open_process(
            list(args),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=_environment(env),
            start_new_session=True,
        )
    except OSError as exc:
        raise ProcessError(args, None, reason=f"cannot start: {exc.strerror or exc}") from exc
    out: list[bytes] = []
    err: list[bytes] = []
    dropped = [0, 0]
    async with process:
        try:
            with anyio.fail_after(timeout if timeout is not None else math.inf):
                async with anyio.create_task_group() as group:

                    async def read(
                        index: int, stream: anyio.abc.ByteReceiveStream, chunks: list[bytes]
                    ) -> None:
                        dropped[index] = await _drain(stream, chunks, max_output)

                    stdout, stderr = process.stdout, process.stderr
                    if stdout is None or stderr is None:  # pragma: no cover - opened with PIPE
                        raise RuntimeError("process started without output pipes")  # noqa: TRY301
                    group.start_soon(read, 0, stdout, out)
                    group.start_soon(read, 1, stderr, err)
                    if input is not None and process.stdin is not None:
                        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                            await process.stdin.send(input)
                        await process.stdin.aclose()
                    returncode = await process.wait()
                    # Output pipes may be held open by a background child: do not wait on it.
                    group.cancel_scope.deadline = anyio.current_time() + DRAIN_GRACE
        except TimeoutError as exc:
            await _terminate(process)
            logger.warning("%s timed out after %g s; killed its process group", args[0], timeout)
            raise ActionTimeout(f"command {' '.join(args)!r}", timeout or 0.0) from exc
        except BaseException:
            # Cancelled (the action's own timeout, or shutdown): never leave the group running.
            await _terminate(process)
            logger.info("%s cancelled; killed its process group", args[0])
            raise
    result = ProcessResult(
        argv=args,
        returncode=returncode,
        stdout=b"".join(out),
        stderr=b"".join(err),
        truncated=any(dropped),
        duration=anyio.current_time() - start,
    )
    logger.debug("%s exited %d after %.3f s", args[0], returncode, result.duration)
    return result


class SpawnedProcess:
    """A long-lived process started by :func:`spawn_process`, in its own process group.

    It outlives the action that started it; the caller keeps this handle (or its :attr:`pid`)
    and stops it with :meth:`stop`.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        """Its process id (also its process group id)."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited (reaping it), else ``None``. Never blocks."""
        return self._popen.poll()

    async def wait(self, *, poll_interval: float = 0.02) -> int:
        """Wait until it exits; cancellable."""
        # Polling, not an Event: the process is not ours to be notified about on every backend
        # (trio and asyncio reap differently), and poll() never blocks.
        while (code := self._popen.poll()) is None:  # noqa: ASYNC110
            await anyio.sleep(poll_interval)
        return code

    async def stop(self, *, sig: int = signal.SIGTERM, grace: float = 5.0) -> int:
        """Signal its whole group, wait up to ``grace`` s, then SIGKILL the group; reap it."""
        code = -1  # replaced below; the shielded scope cannot be cancelled
        with anyio.CancelScope(shield=True):
            if self._popen.poll() is None:
                _kill_group(self.pid, sig)
                with anyio.move_on_after(grace):
                    await self.wait()
                if self._popen.poll() is None:
                    _kill_group(self.pid, signal.SIGKILL)
            code = await self.wait()
        return code  # noqa: RET504 - mypy cannot see that the shielded block always runs


async def spawn_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    output: str | Path | None = None,
    log: Log | None = None,
) -> SpawnedProcess:
    """Start ``argv`` in the background in its own session and return at once.

    :param output: a file both stdout and stderr are appended to (default: discarded).
    :raises ProcessError: it could not be started.
    """
    args = _checked_argv(argv)
    logger = log or _log
    # Popen, not anyio.open_process: the process must outlive this call and the task that made
    # it, and fork+exec returns in about a millisecond. Opening the log file is as quick.
    sink = open(output, "ab") if output is not None else None  # noqa: SIM115, ASYNC230
    try:
        popen = subprocess.Popen(  # noqa: ASYNC220
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink if sink is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if sink is not None else subprocess.DEVNULL,
            cwd=cwd,
            env=_environment(env),
            start_new_session=True,
        )
    except OSError as exc:
        raise ProcessError(args, None, reason=f"cannot start: {exc.strerror or exc}") from exc
    finally:
        if sink is not None:
            sink.close()
    await anyio.lowlevel.checkpoint()
    logger.info("spawned %s as pid %d", args[0], popen.pid)
    return SpawnedProcess(popen)


class LocalHost:
    """This machine: commands run here directly."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or os.uname().nodename

    def __repr__(self) -> str:
        return f"LocalHost({self.name!r})"

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float | None = None,
        input: bytes | None = None,
        max_output: int = 65536,
        log: Log | None = None,
    ) -> ProcessResult:
        """Run a command here (see :func:`run_process`)."""
        return await run_process(
            argv, env=env, cwd=cwd, timeout=timeout, input=input, max_output=max_output, log=log
        )

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        output: str | Path | None = None,
    ) -> SpawnedProcess:
        """Start a long-lived process here (see :func:`spawn_process`)."""
        return await spawn_process(argv, env=env, cwd=cwd, output=output)
