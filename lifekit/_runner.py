"""The one process runner: every external command lifekit or a kit runs goes through here.

Rules it enforces:

- argv lists only: a string is refused, there is never a shell.
- Each command gets its own session, so its pid is its process group id. A timeout or a
  cancellation stops the whole group: SIGTERM (and SIGCONT, so a stopped member sees it),
  then SIGKILL after :data:`KILL_GRACE` for whatever is still running, grandchildren
  included; the command is reaped before :func:`run_process` returns.
- A command that *exits* on its own may leave members of its group running: that is how a
  start script daemonizes, and they are left alone. Their inherited stdout/stderr pipes are
  read for :data:`DRAIN_GRACE` more seconds and then closed, so such a daemon can never hang
  the caller, but it must not keep writing to them: redirect its output (``daemon >log
  2>&1 &``) or start it with :func:`spawn_process` instead.
- Output is captured up to a bound and the rest is read and counted, so a chatty command can
  neither block on a full pipe nor exhaust memory.
- Every command is logged with the caller's logger, which carries the resource's tag.

The runner owns the pipes to the command (plain file descriptors read with
:func:`anyio.wait_readable`) rather than using anyio's process streams, so it can close them
whenever it decides, whatever state the command is in. Reaping goes through anyio's process
for :func:`run_process` (trio waits on a pidfd; asyncio's default child watcher, a thread or a
pidfd per process, works from an event loop in any thread) and through the
:class:`subprocess.Popen` kept by :class:`SpawnedProcess` for :func:`spawn_process`. Both reap
one pid at a time; a process-wide ``waitpid(-1)`` reaper installed by the application (such as
asyncio's old ``FastChildWatcher``) would steal their exit statuses and is not supported.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from lifekit.errors import ActionTimeout, ProcessError

__all__ = ["LocalHost", "ProcessResult", "SpawnedProcess", "run_process", "spawn_process"]

_log = logging.getLogger("lifekit.runner")

#: Seconds between SIGTERM and SIGKILL when a command's group is stopped.
KILL_GRACE = 1.0
#: Seconds to keep reading output after the command exited, for pipes a background child
#: inherited (a daemon that kept stdout open must not hang the caller).
DRAIN_GRACE = 0.2
#: Seconds to wait for a process to die after SIGKILL. Only a process stuck in the kernel
#: (uninterruptible sleep, e.g. on a hung NFS mount) outlives it; it is then left unreaped and
#: logged, rather than hanging the caller for as long as the kernel is stuck.
REAP_TIMEOUT = 5.0

#: Bytes read from or written to a pipe at a time (the default Linux pipe capacity).
_CHUNK = 65536

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@attrs.frozen
class ProcessResult:
    """A finished command.

    :param argv: what ran.
    :param returncode: its exit status (negative: killed by that signal).
    :param stdout: the first ``max_output`` bytes of its standard output.
    :param stderr: the first ``max_output`` bytes of its standard error.
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


# --- arguments -------------------------------------------------------------------------------


def _checked_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        raise TypeError(
            f"argv must be a list of strings, never a shell string: got {argv!r}; "
            "write ['prog', 'arg'] instead"
        )
    checked = tuple(argv)
    if not checked:
        raise TypeError("argv is empty; name the program to run: ['prog', 'arg']")
    for index, arg in enumerate(checked):
        if not isinstance(arg, str):
            raise TypeError(
                f"argv[{index}] is {arg!r} ({type(arg).__name__}), not a string; "
                f"pass str(...) of it in {list(checked)!r}"
            )
    return checked


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"env must map strings to strings: got {key!r}: {value!r}; "
                "convert the value with str(...)"
            )
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"env has an invalid variable name {key!r}; use a name like 'LANG'")
    merged = dict(os.environ)
    merged.update(env)
    return merged


def _check_run_limits(timeout: float | None, max_output: int, input: bytes | None) -> None:
    # `not timeout >= 0` also refuses NaN, which would otherwise mean "never".
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
    if not isinstance(max_output, int) or max_output < 0:
        raise ValueError(f"max_output must be an int >= 0 (bytes kept), got {max_output!r}")
    if input is not None and not isinstance(input, bytes | bytearray | memoryview):
        raise TypeError(
            f"input must be bytes, got {type(input).__name__}; encode text first, "
            "e.g. input=text.encode()"
        )


def _cannot_start(args: tuple[str, ...], exc: OSError) -> ProcessError:
    # subprocess names the missing file (the program, or cwd if that was the one missing).
    reason = f"cannot start: {exc.strerror or exc}"
    if exc.filename is not None and os.fspath(exc.filename) != args[0]:
        reason += f": {os.fspath(exc.filename)!r}"
    return ProcessError(args, None, reason=reason)


# --- process groups --------------------------------------------------------------------------


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any member of process group ``pgid`` is still running.

    Zombies do not count: they are dead and only wait to be reaped, perhaps by an init that
    never does (a container's), and ``kill(0)`` alone would report them forever.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        names = os.listdir("/proc")
    except OSError:  # pragma: no cover - Linux always has /proc; trust kill(0) without it
        return True
    seen_member = False
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                # The command name may hold spaces and parentheses: split after the last ')'.
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue  # it exited while we looked
        if len(fields) > 2 and int(fields[2]) == pgid:
            seen_member = True
            if fields[0] not in (b"Z", b"X"):
                return True
    # kill(0) found a member /proc does not show: a /proc of another pid namespace. Be safe.
    return not seen_member


async def _wait_group_gone(pgid: int, deadline: float) -> None:
    delay = 0.005
    while _group_alive(pgid) and (left := deadline - anyio.current_time()) > 0:
        await anyio.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


async def _stop_group(
    pgid: int,
    *,
    wait: Callable[[], Awaitable[int]],
    exited: Callable[[], bool],
    sig: int,
    grace: float,
    log: Log,
    name: str,
) -> bool:
    """Stop a whole process group and reap its leader; return whether it was reaped.

    Sends ``sig`` to the group, waits up to ``grace`` seconds for the leader and every other
    member to end, then SIGKILLs whatever is left and waits for that too. The group is only
    signalled while its leader is unreaped or a member runs: the kernel does not reuse a pid
    while it names a live group, so a signal can never reach an unrelated process. The caller
    shields this; it ends within ``grace`` + :data:`REAP_TIMEOUT` seconds.
    """
    if exited() and not _group_alive(pgid):
        return True
    if sig != signal.SIGKILL:
        _signal_group(pgid, sig)
        if sig != signal.SIGCONT:
            # A stopped process keeps a SIGTERM pending until it is continued.
            _signal_group(pgid, signal.SIGCONT)
        deadline = anyio.current_time() + grace
        with anyio.move_on_after(grace):
            await wait()
        await _wait_group_gone(pgid, deadline)
        if exited() and not _group_alive(pgid):
            return True
        log.warning(
            "%s (process group %d) still running %g s after %s; sending SIGKILL",
            name,
            pgid,
            grace,
            _signal_name(sig),
        )
    _signal_group(pgid, signal.SIGKILL)
    deadline = anyio.current_time() + REAP_TIMEOUT
    with anyio.move_on_after(REAP_TIMEOUT):
        await wait()
    await _wait_group_gone(pgid, deadline)
    reaped = exited()
    if not reaped or _group_alive(pgid):
        log.error(
            "%s (process group %d) still alive %g s after SIGKILL (stuck in the kernel?)%s",
            name,
            pgid,
            REAP_TIMEOUT,
            "" if reaped else "; its leader is left unreaped",
        )
    return reaped


# --- run_process -----------------------------------------------------------------------------


class _Fds:
    """The parent's pipe ends: each closed exactly once, so a reused fd number is never hit."""

    def __init__(self) -> None:
        self._open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        # os.pipe() fds are close-on-exec: only the command gets its ends (Popen dup2()s
        # them onto 0, 1 and 2), never a command another task starts at the same moment.
        read_fd, write_fd = os.pipe()
        self._open.update((read_fd, write_fd))
        return read_fd, write_fd

    def close(self, fd: int | None) -> None:
        if fd is not None and fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in sorted(self._open):
            self.close(fd)


class _Capture:
    """Output kept up to a bound; the rest is only counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self.dropped = 0
        self.eof = False

    def add(self, data: bytes) -> None:
        # Counted as it arrives: a read cut short by DRAIN_GRACE must not lose the count.
        room = max(0, self.limit - self.kept)
        if room:
            self.chunks.append(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - room)

    def value(self) -> bytes:
        return b"".join(self.chunks)


async def _read_into(fd: int, capture: _Capture) -> None:
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            continue
        if not data:
            capture.eof = True
            return
        capture.add(data)


async def _feed(fd: int, data: bytes | bytearray | memoryview, fds: _Fds) -> None:
    view = memoryview(data).cast("B")
    try:
        while view:
            await anyio.wait_writable(fd)
            try:
                written = os.write(fd, view[:_CHUNK])
            except BlockingIOError:
                continue
            except BrokenPipeError:
                # The command closed stdin or exited without reading all of it: its choice.
                return
            view = view[written:]
    finally:
        fds.close(fd)  # end of input


async def _terminate(process: anyio.abc.Process, args: tuple[str, ...], log: Log) -> None:
    """Stop the command's whole group (TERM, then KILL after the grace period); reap it."""
    with anyio.CancelScope(shield=True):
        await _stop_group(
            process.pid,
            wait=process.wait,
            exited=lambda: process.returncode is not None,
            sig=signal.SIGTERM,
            grace=KILL_GRACE,
            log=log,
            name=args[0],
        )


@attrs.define
class _Run:
    """One started command: its process, our ends of its pipes, and what it printed."""

    args: tuple[str, ...]
    process: anyio.abc.Process
    fds: _Fds
    stdout_fd: int
    stderr_fd: int
    stdin_fd: int | None
    out: _Capture
    err: _Capture
    log: Log
    #: When it exited (event-loop clock).
    ended: float = 0.0

    async def supervise(self, input: bytes | None, timeout: float | None) -> int | None:
        """Feed it, read it, wait for it; return its status, or ``None`` past ``timeout``.

        A cancellation from outside stops its group and propagates; a timeout stops its group
        and returns ``None``.
        """
        returncode: int | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_read_into, self.stdout_fd, self.out)
                group.start_soon(_read_into, self.stderr_fd, self.err)
                if input is not None and self.stdin_fd is not None:
                    group.start_soon(_feed, self.stdin_fd, input, self.fds)
                # The timeout covers the command's run only, not the drain below: a command
                # that exits in time has not timed out.
                with anyio.move_on_after(timeout):
                    returncode = await self.process.wait()
                self.ended = anyio.current_time()
                if returncode is None:
                    group.cancel_scope.cancel()
                else:
                    # Pipes may be held open by a background child: do not wait on it.
                    group.cancel_scope.deadline = anyio.current_time() + DRAIN_GRACE
        except BaseException:
            # Cancelled from outside (the action's own timeout, or shutdown). If the command
            # already exited, what it left running is a daemon it started: leave it.
            if returncode is None:
                await _terminate(self.process, self.args, self.log)
                self.log.info("%s cancelled; killed its process group", self.args[0])
            raise
        if returncode is None:
            await _terminate(self.process, self.args, self.log)
        return returncode


async def _start(
    args: tuple[str, ...],
    *,
    env: dict[str, str] | None,
    cwd: str | Path | None,
    with_stdin: bool,
    max_output: int,
    fds: _Fds,
    log: Log,
) -> _Run:
    """Start the command in its own session, with pipes whose other ends are ours."""
    stdout_fd, child_out = fds.pipe()
    stderr_fd, child_err = fds.pipe()
    child_in, stdin_fd = fds.pipe() if with_stdin else (None, None)
    for fd in (stdout_fd, stderr_fd, stdin_fd):
        if fd is not None:
            os.set_blocking(fd, False)
    try:
        process = await anyio.open_process(
            list(args),
            stdin=child_in if child_in is not None else subprocess.DEVNULL,
            stdout=child_out,
            stderr=child_err,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise _cannot_start(args, exc) from exc
    finally:
        # The command has its own copies now; ours would keep its pipes open forever.
        for fd in (child_out, child_err, child_in):
            fds.close(fd)
    log.debug("running %s as pid %d", args, process.pid)
    return _Run(
        args=args,
        process=process,
        fds=fds,
        stdout_fd=stdout_fd,
        stderr_fd=stderr_fd,
        stdin_fd=stdin_fd,
        out=_Capture(max_output),
        err=_Capture(max_output),
        log=log,
    )


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

    If the command exits on its own, members of its process group it leaves running (a
    daemon a start script put in the background) are left alone; see the module docstring
    for what they may do with the output pipes. A timeout or a cancellation stops the whole
    group and reaps the command before this returns or raises (within :data:`KILL_GRACE`
    seconds plus a little, unless a process ignores even SIGKILL).

    :param env: variables added to (or replacing) the current environment.
    :param cwd: the directory it runs in.
    :param timeout: seconds; past it the process group is killed and
        :class:`~lifekit.errors.ActionTimeout` raised.
    :param input: bytes written to its standard input (otherwise stdin is /dev/null).
    :param max_output: bytes kept of each of stdout and stderr.
    :param log: the caller's logger (its records carry the resource's tag).
    :raises TypeError: ``argv`` is a string, or holds something other than strings.
    :raises ProcessError: the command could not be started.
    :raises ActionTimeout: it ran past ``timeout``.
    """
    args = _checked_argv(argv)
    _check_run_limits(timeout, max_output, input)
    environment = _environment(env)
    logger = log or _log
    fds = _Fds()
    try:
        start = anyio.current_time()
        run = await _start(
            args,
            env=environment,
            cwd=cwd,
            with_stdin=input is not None,
            max_output=max_output,
            fds=fds,
            log=logger,
        )
        returncode = await run.supervise(input, timeout)
    finally:
        fds.close_all()
    if returncode is None:
        logger.warning("%s timed out after %g s; killed its process group", args[0], timeout)
        # A cancellation that arrived meanwhile wins over the timeout.
        await anyio.lowlevel.checkpoint_if_cancelled()
        raise ActionTimeout(f"command {' '.join(args)!r}", timeout or 0.0)
    out, err = run.out, run.err
    if not (out.eof and err.eof):
        logger.debug(
            "%s left a process holding its output open; stopped reading after %g s",
            args[0],
            DRAIN_GRACE,
        )
    result = ProcessResult(
        argv=args,
        returncode=returncode,
        stdout=out.value(),
        stderr=err.value(),
        truncated=bool(out.dropped or err.dropped),
        duration=run.ended - start,
    )
    logger.debug(
        "%s after %.3f s%s",
        result.summary(),
        result.duration,
        f" ({out.dropped + err.dropped} bytes of output dropped)" if result.truncated else "",
    )
    return result


# --- spawn_process ---------------------------------------------------------------------------

#: Spawned processes not yet reaped, by pid. Holding their Popen here means a dropped
#: :class:`SpawnedProcess` handle neither warns (Popen.__del__ warns about a running child)
#: nor leaves a zombie: :func:`spawn_process` reaps the ones that ended.
_unreaped: dict[int, subprocess.Popen[bytes]] = {}


def _reap_ended() -> None:
    for pid, popen in list(_unreaped.items()):
        if popen.poll() is not None:
            _unreaped.pop(pid, None)


class SpawnedProcess:
    """A long-lived process started by :func:`spawn_process`, in its own process group.

    It outlives the action that started it; the caller keeps this handle (or its :attr:`pid`)
    and stops it with :meth:`stop`. Dropping the handle is safe: the process keeps running,
    and is reaped after it ends.
    """

    def __init__(self, popen: subprocess.Popen[bytes], *, log: Log | None = None) -> None:
        self._popen = popen
        self._log = log or _log
        if popen.returncode is None:
            _unreaped[popen.pid] = popen

    def __repr__(self) -> str:
        return f"<SpawnedProcess pid={self.pid} argv={self.argv!r} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        """Its process id (also its process group id)."""
        return self._popen.pid

    @property
    def argv(self) -> tuple[str, ...]:
        """What runs."""
        args = self._popen.args
        if isinstance(args, str | bytes | os.PathLike):
            return (os.fsdecode(args),)
        return tuple(os.fsdecode(arg) for arg in args)

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited (reaping it), else ``None``. Never blocks."""
        code = self._popen.poll()
        if code is not None:
            _unreaped.pop(self.pid, None)
        return code

    async def wait(self, *, poll_interval: float = 0.02) -> int:
        """Wait until it exits and reap it; cancellable.

        Sleeps on a pidfd (no polling, nothing to do at idle); where pidfds are unavailable
        (Linux < 5.3), polls every ``poll_interval`` seconds instead.
        """
        while (code := self.returncode) is None:
            try:
                # Race-free: the pid cannot be reused while it is our unreaped child.
                pidfd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):
                await anyio.sleep(poll_interval)
                continue
            try:
                if self.returncode is None:
                    await anyio.wait_readable(pidfd)  # readable once it has exited
            finally:
                os.close(pidfd)
        return code

    async def stop(self, *, sig: int = signal.SIGTERM, grace: float = 5.0) -> int:
        """Signal its whole group, wait up to ``grace`` s, then SIGKILL the group; reap it.

        Shielded from cancellation (a stop must finish), so it takes at most ``grace`` +
        :data:`REAP_TIMEOUT` seconds. Members of the group are signalled even when the
        leader itself has already exited.

        :returns: its exit status (``-signal`` if a signal ended it).
        :raises ProcessError: it survived SIGKILL (stuck in the kernel) and was not reaped.
        """
        self._log.info("stopping %s (pid %d) with %s", self.argv[0], self.pid, _signal_name(sig))
        with anyio.CancelScope(shield=True):
            reaped = await _stop_group(
                self.pid,
                wait=self.wait,
                exited=lambda: self.returncode is not None,
                sig=sig,
                grace=grace,
                log=self._log,
                name=self.argv[0],
            )
        code = self.returncode
        if not reaped or code is None:
            raise ProcessError(
                self.argv,
                None,
                reason=f"pid {self.pid} survived SIGKILL for {REAP_TIMEOUT:g} s "
                "(stuck in the kernel?); it was not reaped",
            )
        return code


async def spawn_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    output: str | Path | None = None,
    log: Log | None = None,
) -> SpawnedProcess:
    """Start ``argv`` in the background in its own session and return at once.

    :param env: variables added to (or replacing) the current environment.
    :param cwd: the directory it runs in.
    :param output: a file both stdout and stderr are appended to (default: discarded).
    :param log: the caller's logger (its records carry the resource's tag).
    :raises TypeError: ``argv`` is a string, or holds something other than strings.
    :raises ProcessError: it could not be started, or ``output`` could not be opened.
    """
    args = _checked_argv(argv)
    environment = _environment(env)
    logger = log or _log
    # The one checkpoint comes first: once the process exists, nothing may cancel this call
    # before the caller holds its handle.
    await anyio.lowlevel.checkpoint()
    _reap_ended()
    # Popen, not anyio.open_process: the process must outlive this call and the task that made
    # it, and fork+exec returns in about a millisecond. Opening the log file is as quick.
    try:
        sink = open(output, "ab") if output is not None else None  # noqa: SIM115, ASYNC230
    except OSError as exc:
        raise ProcessError(
            args, None, reason=f"cannot open its output file {str(output)!r}: {exc.strerror or exc}"
        ) from exc
    try:
        popen = subprocess.Popen(  # noqa: ASYNC220
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink if sink is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if sink is not None else subprocess.DEVNULL,
            cwd=cwd,
            env=environment,
            start_new_session=True,
        )
    except OSError as exc:
        raise _cannot_start(args, exc) from exc
    finally:
        if sink is not None:
            sink.close()
    logger.info("spawned %s as pid %d", args[0], popen.pid)
    return SpawnedProcess(popen, log=logger)


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
        log: Log | None = None,
    ) -> SpawnedProcess:
        """Start a long-lived process here (see :func:`spawn_process`)."""
        return await spawn_process(argv, env=env, cwd=cwd, output=output, log=log)
