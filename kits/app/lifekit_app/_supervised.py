"""Mode ``supervised``: lifekit starts one foreground process and watches it by pid.

The process is started with the host's ``spawn`` (its own session and process group, output
appended to ``<state_dir>/<tag>.log``). Its identity is written to ``<state_dir>/<tag>.pid``
as JSON: the pid, the process's start time (field 22 of ``/proc/<pid>/stat``, clock ticks since
boot) and the kernel's boot id. A pid alone is not an identity: after the process dies the
kernel hands the number to someone else, and after a reboot early pids and start times repeat.
The pid, the start time and the boot id together name one process for as long as it lives.

Because the identity is on disk, a lifekit that restarts *adopts* a process it started before
(quickcheck says ok, restore leaves it alone, remove stops it) instead of starting a second
copy. The kit object keeps the :class:`~lifekit.kit.SpawnedProcess` handle of each process it
started itself, so it can reap it and report its exit status; an adopted process is watched
through ``/proc`` only, and a zombie (state ``Z``) counts as gone because its parent, which
is not us, may never reap it.

Stopping sends ``stop_signal`` to the whole process group (helpers the application forked die
with it), waits up to ``stop_timeout`` for every member to exit, then sends SIGKILL to the
group. A pid whose identity no longer matches is never signalled.

This mode reads ``/proc`` and sends signals from the lifekit process itself, so the host must
share lifekit's pid namespace (true for :class:`~lifekit.kit.LocalHost` and for lab nodes made
of network and mount namespaces).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import attrs

from lifekit.errors import ProcessError
from lifekit.kit import ActionContext, Outcome, Result, SpawnedProcess
from lifekit_app._exitcodes import check_result
from lifekit_app._params import AppConfig

__all__ = ["SupervisedMode"]

#: Seconds between two looks at a process that is being waited for.
POLL_INTERVAL = 0.05
#: Seconds to wait for the group to vanish after SIGKILL before calling the remove failed.
KILL_WAIT = 5.0
#: Longest pause between two runs of ``ready_check`` (the pause doubles up to this).
READY_MAX_INTERVAL = 1.0
#: Bytes read from the end of the log for the last line shown in reasons.
_LOG_TAIL = 4096


@attrs.frozen
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this mode reads."""

    state: str
    pgrp: int
    start_time: int


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or ``None`` if no such process exists."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain ')' and spaces:
    # the fields that follow start after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcStat(state=fields[0].decode(), pgrp=int(fields[2]), start_time=int(fields[19]))


@functools.cache
def boot_id() -> str:
    """This boot's id (it cannot change while this process lives)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _is_dead(stat: ProcStat) -> bool:
    # Z: a zombie, exited but not reaped; X: being torn down.
    return stat.state in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            stat = read_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and not _is_dead(stat):
                members.append(int(entry.name))
    return members


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class PidRecord:
    """What the pidfile says: one process's identity, and what it runs."""

    pid: int
    start_time: int
    boot_id: str
    argv: tuple[str, ...] = attrs.field(converter=_strings)

    def to_json(self) -> str:
        """The pidfile's content."""
        return json.dumps(attrs.asdict(self)) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        """Parse a pidfile.

        :raises ValueError: it is not one.
        """
        data: Any = json.loads(text)
        try:
            return cls(
                pid=int(data["pid"]),
                start_time=int(data["start_time"]),
                boot_id=str(data["boot_id"]),
                argv=[str(arg) for arg in data["argv"]],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a lifekit_app pidfile: {exc}") from exc


class Liveness(enum.Enum):
    """What became of the process a pidfile names."""

    #: Alive, and the same process.
    RUNNING = "running"
    #: Exited; not reaped yet.
    ZOMBIE = "zombie"
    #: No process has that pid now (in this boot).
    GONE = "gone"
    #: The pid belongs to another process now, or the record is from another boot.
    NOT_OURS = "not ours"


def liveness(record: PidRecord) -> tuple[Liveness, str]:
    """What became of the recorded process, with the reason in words."""
    if record.boot_id != boot_id():
        return Liveness.NOT_OURS, f"pidfile of pid {record.pid} is from an earlier boot"
    stat = read_stat(record.pid)
    if stat is None:
        return Liveness.GONE, f"pid {record.pid} is gone"
    if stat.start_time != record.start_time:
        return Liveness.NOT_OURS, (
            f"pid {record.pid} now belongs to another process (start time {stat.start_time}, "
            f"recorded {record.start_time})"
        )
    if _is_dead(stat):
        return Liveness.ZOMBIE, f"pid {record.pid} exited (a zombie, not reaped)"
    return Liveness.RUNNING, f"pid {record.pid} is running"


def _read_pidfile(path: Path) -> PidRecord | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return PidRecord.from_json(text)


def _write_pidfile(path: Path, record: PidRecord) -> None:
    # Write then rename: a crash never leaves half a pidfile.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(record.to_json())
    temporary.replace(path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _LOG_TAIL))
            tail = log.read().decode(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return tail[-1] if tail else ""


def _signal(pid: int, sig: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class SupervisedMode:
    """The actions of mode ``supervised``; holds the handles of the processes it started."""

    def __init__(self) -> None:
        # pidfile -> handle, for the processes this kit object started (not adopted ones).
        self._spawned: dict[Path, SpawnedProcess] = {}

    @staticmethod
    def _files(config: AppConfig, ctx: ActionContext) -> tuple[Path, Path]:
        # Tags are ordinary names, but a tag is not a path: quote anything that could be one.
        name = quote(config.tag, safe="")
        return ctx.state_dir / f"{name}.pid", ctx.state_dir / f"{name}.log"

    def _exit_code(self, pidfile: Path, record: PidRecord) -> int | None:
        """The exit status of a process this object started (reaping it), else ``None``."""
        handle = self._spawned.get(pidfile)
        if handle is None or handle.pid != record.pid:
            return None
        return handle.returncode

    def _forget(self, pidfile: Path) -> None:
        handle = self._spawned.pop(pidfile, None)
        if handle is not None:
            _ = handle.returncode  # polling reaps it if it exited

    def _reap_orphaned_handle(self, pidfile: Path) -> None:
        # A handle whose pidfile is gone: drop it once its process has exited (reaping it).
        handle = self._spawned.get(pidfile)
        if handle is not None and handle.returncode is not None:
            del self._spawned[pidfile]

    def _read(self, pidfile: Path, ctx: ActionContext) -> PidRecord | None:
        try:
            return _read_pidfile(pidfile)
        except ValueError as exc:
            # Only this kit writes the file, atomically; a bad one was edited by hand.
            ctx.log.warning("ignoring unreadable pidfile %s: %s", pidfile, exc)
            return None

    def _gone_reason(self, pidfile: Path, record: PidRecord, log: Path, detail: str) -> str:
        code = self._exit_code(pidfile, record)
        reason = f"pid {record.pid} {_describe_exit(code)}" if code is not None else detail
        last = _last_line(log)
        return f"{reason}; last output: {last}" if last else reason

    async def quickcheck(self, config: AppConfig, ctx: ActionContext) -> Result:
        """Is the recorded process alive and the same one? Then run ``check`` if given."""
        pidfile, log = self._files(config, ctx)
        record = self._read(pidfile, ctx)
        if record is None:
            self._reap_orphaned_handle(pidfile)
            return Result.not_running("no pidfile: not started by lifekit on this node")
        self._exit_code(pidfile, record)  # reap our own child if it exited
        state, detail = liveness(record)
        if state is not Liveness.RUNNING:
            return Result.not_running(self._gone_reason(pidfile, record, log, detail))
        if config.check is None:
            return Result.ok(detail)
        try:
            process = await ctx.run(config.check, env=config.env, cwd=config.cwd)
        except ProcessError as exc:
            return Result.soft_failure(f"{detail}, but check cannot run ({exc})")
        found = check_result("check", process)
        if found.outcome is Outcome.NOT_RUNNING:
            # The process is there but does not do its job: a local restart may fix it.
            return Result.soft_failure(f"{detail}, but {found.reason}")
        return found

    async def restore(self, config: AppConfig, ctx: ActionContext) -> Result:
        """Start the process unless the recorded one runs; then wait for ``ready_check``."""
        pidfile, log = self._files(config, ctx)
        started = await self._ensure_started(config, ctx, pidfile=pidfile, log=log)
        if isinstance(started, Result):
            return started
        record, how = started
        if config.ready_check is None:
            return Result.ok(how)
        return await self._wait_ready(
            config.ready_check, config, ctx, pidfile=pidfile, record=record, log=log, how=how
        )

    async def _ensure_started(
        self, config: AppConfig, ctx: ActionContext, *, pidfile: Path, log: Path
    ) -> tuple[PidRecord, str] | Result:
        """The running process's record and how it came to run, or why it could not start."""
        record = self._read(pidfile, ctx)
        if record is not None:
            state, detail = liveness(record)
            if state is Liveness.RUNNING:
                return record, f"pid {record.pid} already running"
            if state is Liveness.NOT_OURS:
                ctx.log.info("stale pidfile: %s", detail)
            else:
                # Helpers the dead process forked may still hold its ports: clear them first.
                cleared = await self._stop(pidfile, record, config)
                if cleared.is_failure:
                    return cleared
        argv = config.command
        if argv is None:  # pragma: no cover - parse() requires it
            raise AssertionError("command is required in mode 'supervised'")
        # Shielded from spawn to pidfile: a cancellation in between would leave a process that
        # no pidfile names and that remove could never find.
        with anyio.CancelScope(shield=True):
            try:
                handle = await ctx.host.spawn(argv, env=config.env, cwd=config.cwd, output=log)
            except ProcessError as exc:
                _unlink(pidfile)
                return Result.hard_failure(f"command: cannot run ({exc})")
            stat = read_stat(handle.pid)
            if stat is None:  # pragma: no cover - an unreaped child has a /proc entry
                await handle.stop(sig=signal.SIGKILL, grace=0)
                return Result.soft_failure(f"pid {handle.pid} vanished from /proc at once")
            new = PidRecord(handle.pid, stat.start_time, boot_id(), argv)
            _write_pidfile(pidfile, new)
            self._spawned[pidfile] = handle
        return new, f"started pid {new.pid}"

    async def _wait_ready(
        self,
        ready_check: tuple[str, ...],
        config: AppConfig,
        ctx: ActionContext,
        *,
        pidfile: Path,
        record: PidRecord,
        log: Path,
        how: str,
    ) -> Result:
        pause = POLL_INTERVAL
        while True:
            self._exit_code(pidfile, record)  # reap our own child if it exited
            state, detail = liveness(record)
            if state is not Liveness.RUNNING:
                reason = self._gone_reason(pidfile, record, log, detail)
                return Result.soft_failure(f"{reason} before ready_check passed")
            try:
                process = await ctx.run(ready_check, env=config.env, cwd=config.cwd)
            except ProcessError as exc:
                return Result.hard_failure(f"ready_check: cannot run ({exc})")
            if process.ok:
                return Result.ok(f"{how}; ready_check passed")
            await anyio.sleep(pause)
            pause = min(pause * 2, READY_MAX_INTERVAL)

    async def remove(self, config: AppConfig, ctx: ActionContext) -> Result:
        """Stop the recorded process group and delete the pidfile; idempotent."""
        pidfile, _ = self._files(config, ctx)
        record = self._read(pidfile, ctx)
        if record is None:
            handle = self._spawned.get(pidfile)
            stat = read_stat(handle.pid) if handle is not None else None
            if handle is None or handle.returncode is not None or stat is None:
                self._forget(pidfile)
                return Result.ok("not running (no pidfile)")
            # The pidfile vanished under a process we started (and have not reaped, so its
            # pid is still its own): stop it all the same.
            record = PidRecord(handle.pid, stat.start_time, boot_id(), ())
        state, detail = liveness(record)
        if state is Liveness.NOT_OURS:
            _unlink(pidfile)
            self._forget(pidfile)
            return Result.ok(f"not running ({detail}; not signalled)")
        stopped = await self._stop(pidfile, record, config)
        if stopped.is_failure:
            return stopped
        _unlink(pidfile)
        self._forget(pidfile)
        return stopped

    async def _stop(self, pidfile: Path, record: PidRecord, config: AppConfig) -> Result:
        """Signal the group, wait ``stop_timeout``, SIGKILL it, wait; never signals a stranger.

        The caller has checked that ``record`` is not someone else's process. The group is
        signalled even when its leader is gone: helpers it left behind are still ours, because
        the kernel does not hand out a pid that is still in use as a process group id.
        """
        pgid = record.pid

        def leader_alive() -> bool:
            self._exit_code(pidfile, record)  # reap our own child as soon as it exits
            return liveness(record)[0] is Liveness.RUNNING

        def alive() -> bool:
            return leader_alive() or bool(group_members(pgid))

        def send(sig: int) -> None:
            _signal(pgid, sig, group=True)
            # A leader that moved to a group of its own is signalled directly.
            stat = read_stat(record.pid)
            if leader_alive() and stat is not None and stat.pgrp != pgid:
                _signal(record.pid, sig, group=False)

        if not alive():
            return Result.ok(f"pid {record.pid} had already exited")
        sig = config.stop_signal
        send(sig)
        with anyio.move_on_after(config.stop_timeout):
            while alive():  # noqa: ASYNC110 - there is no event for another process's exit
                await anyio.sleep(POLL_INTERVAL)
        if not alive():
            return Result.ok(f"stopped pid {record.pid} with {sig.name}")
        send(signal.SIGKILL)
        with anyio.move_on_after(KILL_WAIT):
            while alive():  # noqa: ASYNC110 - as above
                await anyio.sleep(POLL_INTERVAL)
        if alive():
            return Result.hard_failure(
                f"process group {pgid} survived SIGKILL for {KILL_WAIT:g} s (stuck in the "
                f"kernel?); its pidfile is kept so the next remove tries again"
            )
        return Result.ok(
            f"killed pid {record.pid} with SIGKILL: {sig.name} did not stop it within "
            f"stop_timeout={config.stop_timeout:g} s"
        )

    async def recover(self, config: AppConfig, ctx: ActionContext) -> Result:
        """Stop what is left, then start again."""
        removed = await self.remove(config, ctx)
        if removed.is_failure:
            return removed
        return await self.restore(config, ctx)
