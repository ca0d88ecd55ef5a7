"""The process runner with real processes, on asyncio and trio.

Each test starts real commands (``sh``, ``sleep``, ``cat``...) and checks what the runner
promises: argv lists only, environment, timeouts and cancellation that kill the whole process
group (grandchildren included) and reap the command, bounded output, no hang on pipes a
daemon keeps open, stdin, logging with the caller's tag, and long-lived spawned processes
that are stopped and reaped. Every process a test starts is killed by pid at teardown, and
every test checks that it leaked no file descriptor and caused no ResourceWarning.

Processes orphaned here are reparented to the machine's init, which may never reap them (a
container's init often does not): a dead grandchild may therefore linger as a zombie, so
"dead" below means "gone or a zombie".
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
import tracemalloc
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from functools import partial
from pathlib import Path

import anyio
import pytest

from lifekit._runner import (
    DRAIN_GRACE,
    KILL_GRACE,
    LocalHost,
    SpawnedProcess,
    run_process,
    spawn_process,
)
from lifekit.errors import ActionTimeout, ProcessError

pytestmark = pytest.mark.anyio

#: Slack for "promptly" on a busy two-core CI machine.
SLACK = 1.5


# --- helpers ---------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):  # gone, even mid-read
        return None


def _state(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def _running(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


async def _until(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds: it reads files and /proc, which notify nobody."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but time
            await anyio.sleep(0.01)


async def _wait_for(path: Path) -> None:
    await _until(path.exists)


class Procs:
    """Every process a test starts, so teardown can kill it by pid even when the test fails.

    Commands get :attr:`env`, whose token is inherited by their children: teardown kills
    only processes that carry it, so a recycled pid is never hit.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.token = uuid.uuid4().hex
        self.env = {"LIFEKIT_TEST_TOKEN": self.token, "D": str(directory)}
        self.handles: list[SpawnedProcess] = []

    def keep(self, handle: SpawnedProcess) -> SpawnedProcess:
        self.handles.append(handle)
        return handle

    def _ours(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                return f"LIFEKIT_TEST_TOKEN={self.token}".encode() in environ.read()
        except OSError:
            return False

    def kill_all(self) -> None:
        for handle in self.handles:
            if handle.returncode is None:
                os.killpg(handle.pid, signal.SIGKILL)
        for path in self.dir.glob("*.pid"):
            pid = _pid(path)
            if _running(pid) and self._ours(pid):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        for handle in self.handles:  # reap our direct children
            while handle.returncode is None and time.monotonic() < deadline:
                time.sleep(0.01)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Processes started by the test, killed by pid at teardown."""
    tracked = Procs(tmp_path)
    try:
        yield tracked
    finally:
        tracked.kill_all()


def _open_fds() -> dict[int, str]:
    """This process's open descriptors and what they point to.

    The descriptor listdir() itself uses is closed again before readlink() and so left out;
    otherwise a leak reusing its number would go unseen.
    """
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


@pytest.fixture(autouse=True)
async def no_leaks() -> AsyncIterator[None]:
    """Fail a test that leaks a file descriptor or leaves garbage that warns when collected.

    Async, so both snapshots are taken inside the test's own event loop.
    """
    before = _open_fds()
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    resource = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not resource, resource
    after = _open_fds()
    leaked = {fd: target for fd, target in after.items() if fd not in before}
    assert not leaked, f"file descriptors leaked: {leaked}"


#: A command whose group holds two grandchildren: one dies on SIGTERM, one ignores it.
#: ``$D/ready`` appears once both exist and the stubborn one ignores SIGTERM.
GROUP_SCRIPT = """
echo $$ > "$D/leader.pid"
sleep 60 & echo $! > "$D/plain.pid"
sh -c 'trap "" TERM; echo $$ > "$D/stubborn.pid"; exec sleep 60' &
while [ ! -s "$D/stubborn.pid" ]; do sleep 0.01; done
touch "$D/ready"
wait
"""


def _group_pids(directory: Path) -> dict[str, int]:
    return {name: _pid(directory / f"{name}.pid") for name in ("leader", "plain", "stubborn")}


# --- argv, environment, stdin, errors --------------------------------------------------------


async def test_shell_strings_are_refused_with_the_fix() -> None:
    for call in (
        partial(run_process, "echo hi"),
        partial(spawn_process, "echo hi"),
        partial(LocalHost().run, b"echo hi"),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match=r"never a shell string.*\['prog', 'arg'\]"):
            await call()
    with pytest.raises(TypeError, match="argv is empty"):
        await run_process([])
    with pytest.raises(TypeError, match=r"argv\[1\] is 3 \(int\)"):
        await run_process(["echo", 3])  # type: ignore[list-item]


async def test_bad_limits_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"max_output must be an int >= 0.*-1"):
        await run_process(["true"], max_output=-1)
    with pytest.raises(ValueError, match=r"timeout must be None or >= 0 seconds.*nan"):
        await run_process(["true"], timeout=float("nan"))
    with pytest.raises(TypeError, match=r"input must be bytes.*\.encode\(\)"):
        await run_process(["cat"], input="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"env must map strings to strings.*'N': 1"):
        await run_process(["true"], env={"N": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="env has an invalid variable name 'A=B'"):
        await run_process(["true"], env={"A=B": "x"})


async def test_status_and_output_are_captured() -> None:
    result = await run_process(["sh", "-c", "echo out; echo first >&2; echo boom >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"first\nboom\n")
    assert not result.ok
    assert not result.truncated
    assert result.argv[0] == "sh"
    assert result.summary() == "sh exited with status 3: boom"
    with pytest.raises(ProcessError, match="exited with status 3: boom") as caught:
        result.check()
    assert caught.value.returncode == 3
    ok = await run_process(["true"])
    assert ok.check() is ok


async def test_env_is_added_to_the_current_environment(tmp_path: Path) -> None:
    result = await run_process(["env"], env={"LIFEKIT_RUNNER_VAR": "a b=c"}, cwd=tmp_path)
    seen = dict(line.split("=", 1) for line in result.text.splitlines())
    assert seen["LIFEKIT_RUNNER_VAR"] == "a b=c"
    assert seen["PATH"] == os.environ["PATH"]  # inherited, not replaced
    assert (await run_process(["pwd"], cwd=tmp_path)).text.strip() == str(tmp_path)


async def test_stdin_input() -> None:
    assert (await run_process(["cat"], input=b"hello\0world")).stdout == b"hello\0world"
    # More than a pipe holds: written while the output is read.
    big = os.urandom(1_000_000)
    assert (await run_process(["cat"], input=big, max_output=2_000_000)).stdout == big
    # A command that stops reading (or never reads) is not an error of ours.
    assert (await run_process(["head", "-c", "10"], input=big)).stdout == big[:10]
    assert (await run_process(["true"], input=big, timeout=5)).returncode == 0
    # Without input, stdin is /dev/null: a reader sees end of file at once.
    assert (await run_process(["cat"], timeout=5)).stdout == b""


async def test_missing_program_or_directory_raises_process_error(tmp_path: Path) -> None:
    for start in (run_process, spawn_process):
        with pytest.raises(ProcessError, match="'lifekit-no-such-program': cannot start") as exc:
            await start(["lifekit-no-such-program", "--flag"])
        assert exc.value.returncode is None
        assert isinstance(exc.value, OSError)
        missing = tmp_path / "gone"
        with pytest.raises(ProcessError, match=f"'true': cannot start.*'{missing}'"):
            await start(["true"], cwd=missing)


# --- timeout and cancellation ----------------------------------------------------------------


async def test_timeout_kills_the_whole_group_and_reaps(procs: Procs) -> None:
    started = anyio.current_time()
    with pytest.raises(ActionTimeout) as caught:
        await run_process(["sh", "-c", GROUP_SCRIPT], env=procs.env, timeout=0.5)
    elapsed = anyio.current_time() - started
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.timeout == 0.5
    assert "sh -c" in str(caught.value)
    assert (procs.dir / "ready").exists(), "the command was not set up before the timeout"
    pids = _group_pids(procs.dir)
    assert _state(pids["leader"]) is None, "the command was not reaped"
    assert not _running(pids["plain"])
    assert not _running(pids["stubborn"]), "a grandchild ignoring SIGTERM survived"
    # SIGTERM, the grace period for the stubborn grandchild, then SIGKILL: no longer.
    assert 0.5 + KILL_GRACE <= elapsed < 0.5 + KILL_GRACE + SLACK


async def test_cancel_scope_kills_the_whole_group_promptly(procs: Procs) -> None:
    scope = anyio.CancelScope()
    returned: list[float] = []

    async def run() -> None:
        with scope:
            await run_process(["sh", "-c", GROUP_SCRIPT], env=procs.env)
        returned.append(anyio.current_time())

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await _wait_for(procs.dir / "ready")
        cancelled = anyio.current_time()
        scope.cancel()
    assert scope.cancelled_caught
    assert returned[0] - cancelled < KILL_GRACE + SLACK
    pids = _group_pids(procs.dir)
    assert _state(pids["leader"]) is None, "the command was not reaped"
    assert not _running(pids["plain"])
    assert not _running(pids["stubborn"])


async def test_move_on_after_returns_promptly_and_kills_grandchildren(procs: Procs) -> None:
    script = 'echo $$ > "$D/leader.pid"; sleep 60 & echo $! > "$D/plain.pid"; wait'
    started = anyio.current_time()
    with anyio.move_on_after(0.5) as scope:
        await run_process(["sh", "-c", script], env=procs.env)
    assert scope.cancelled_caught
    assert anyio.current_time() - started < 0.5 + SLACK
    assert _state(_pid(procs.dir / "leader.pid")) is None
    assert not _running(_pid(procs.dir / "plain.pid"))


async def test_exit_just_before_the_timeout_is_not_a_timeout(procs: Procs) -> None:
    # It exits at about 0.2 s; its daemon holds stdout, so reading goes on until about
    # 0.2 + DRAIN_GRACE, past the 0.35 s timeout. The command finished in time all the same,
    # and the daemon it left is not killed.
    script = 'sleep 60 & echo $! > "$D/daemon.pid"; echo started; sleep 0.2'
    assert DRAIN_GRACE > 0.15
    result = await run_process(["sh", "-c", script], env=procs.env, timeout=0.35)
    assert (result.returncode, result.stdout) == (0, b"started\n")
    assert _running(_pid(procs.dir / "daemon.pid"))


async def test_a_cancellation_after_the_command_exited_leaves_its_daemon(procs: Procs) -> None:
    # The daemon holds stdout, so the runner is still reading when the cancellation comes;
    # the command itself has exited, so what it left running is not killed.
    script = 'echo $$ > "$D/leader.pid"; sleep 60 & echo $! > "$D/daemon.pid"'
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await run_process(["sh", "-c", script], env=procs.env)

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await _wait_for(procs.dir / "daemon.pid")
        leader = _pid(procs.dir / "leader.pid")
        await _until(lambda: _state(leader) is None)  # exited and reaped
        await anyio.sleep(0.02)  # well inside DRAIN_GRACE
        scope.cancel()
    assert scope.cancelled_caught
    assert _running(_pid(procs.dir / "daemon.pid"))


# --- output ----------------------------------------------------------------------------------


async def test_ten_megabytes_of_output_are_bounded() -> None:
    script = "head -c 10000000 /dev/zero; head -c 10000000 /dev/zero >&2; echo done >&2"
    tracemalloc.start()
    try:
        started = anyio.current_time()
        result = await run_process(["sh", "-c", script], max_output=4096, timeout=20)
        elapsed = anyio.current_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.returncode == 0
    assert result.stdout == bytes(4096)
    assert result.stderr == bytes(4096)
    assert result.truncated
    assert elapsed < 5, "a full pipe blocked the command"
    assert peak < 3_000_000, f"{peak} bytes allocated for 20 MB of dropped output"


async def test_output_exactly_at_the_bound_is_not_truncated() -> None:
    exact = await run_process(["head", "-c", "100", "/dev/zero"], max_output=100)
    assert (len(exact.stdout), exact.truncated) == (100, False)
    over = await run_process(["head", "-c", "101", "/dev/zero"], max_output=100)
    assert (len(over.stdout), over.truncated) == (100, True)
    none = await run_process(["echo", "x"], max_output=0)
    assert (none.stdout, none.truncated) == (b"", True)


async def test_a_daemon_keeping_stdout_open_does_not_hang_the_caller(procs: Procs) -> None:
    # 100 kB printed, then a background child that inherits stdout and keeps it open.
    script = 'head -c 100000 /dev/zero; sleep 60 & echo $! > "$D/daemon.pid"'
    started = anyio.current_time()
    result = await run_process(["sh", "-c", script], env=procs.env, max_output=1000, timeout=10)
    assert anyio.current_time() - started < DRAIN_GRACE + SLACK
    assert result.returncode == 0
    assert result.stdout == bytes(1000)
    assert result.truncated  # counted although reading was cut short
    # Left alone: a start script that daemonizes has done its job.
    assert _running(_pid(procs.dir / "daemon.pid"))


# --- logging ---------------------------------------------------------------------------------


async def test_records_carry_the_callers_tag(
    caplog: pytest.LogCaptureFixture, procs: Procs
) -> None:
    caplog.set_level(logging.DEBUG, logger="lifekit.test.runner")
    log = logging.LoggerAdapter(logging.getLogger("lifekit.test.runner"), {"tag": "web-1"})
    await run_process(["sh", "-c", "echo oops >&2; exit 2"], log=log)
    with pytest.raises(ActionTimeout):
        await run_process(["sleep", "60"], env=procs.env, timeout=0.1, log=log)
    handle = procs.keep(await spawn_process(["sleep", "60"], env=procs.env, log=log))
    await handle.stop()
    records = [r for r in caplog.records if r.name == "lifekit.test.runner"]
    assert records
    assert {getattr(r, "tag", None) for r in records} == {"web-1"}
    text = "\n".join(r.getMessage() for r in records)
    for expected in ("running", "sh exited with status 2: oops", "timed out", "spawned", "stop"):
        assert expected in text


# --- spawn_process ---------------------------------------------------------------------------


async def test_spawn_returns_at_once_in_its_own_group(procs: Procs) -> None:
    started = anyio.current_time()
    handle = procs.keep(await spawn_process(["sleep", "60"], env=procs.env))
    assert anyio.current_time() - started < 0.5
    assert os.getpgid(handle.pid) == handle.pid
    assert os.getsid(handle.pid) == handle.pid
    assert handle.argv == ("sleep", "60")
    assert repr(handle) == f"<SpawnedProcess pid={handle.pid} argv=('sleep', '60') returncode=None>"
    clock = time.perf_counter()
    running = handle.returncode
    assert time.perf_counter() - clock < 0.05, "returncode blocked"
    assert running is None
    assert await handle.stop() == -signal.SIGTERM
    assert handle.returncode == -signal.SIGTERM
    assert _state(handle.pid) is None, "not reaped"


async def test_spawn_appends_output_to_a_file(tmp_path: Path, procs: Procs) -> None:
    output = tmp_path / "app.log"
    output.write_text("earlier run\n")
    script = "echo out; echo err >&2"
    handle = procs.keep(await spawn_process(["sh", "-c", script], env=procs.env, output=output))
    assert await handle.wait() == 0
    assert output.read_text() == "earlier run\nout\nerr\n"
    with pytest.raises(ProcessError, match=r"cannot open its output file '.*/no/dir/x\.log'"):
        await spawn_process(["true"], output=tmp_path / "no" / "dir" / "x.log")


async def test_stop_escalates_to_sigkill_and_reaps(procs: Procs) -> None:
    script = 'trap "" TERM; touch "$D/ready"; while :; do sleep 0.05; done'
    handle = procs.keep(await spawn_process(["sh", "-c", script], env=procs.env))
    await _wait_for(procs.dir / "ready")
    started = anyio.current_time()
    assert await handle.stop(grace=0.3) == -signal.SIGKILL
    assert 0.3 <= anyio.current_time() - started < 0.3 + SLACK
    assert _state(handle.pid) is None, "a zombie was left"


async def test_stop_signals_the_whole_group(procs: Procs) -> None:
    script = 'sleep 60 & echo $! > "$D/child.pid"; touch "$D/ready"; wait'
    handle = procs.keep(await spawn_process(["sh", "-c", script], env=procs.env))
    await _wait_for(procs.dir / "ready")
    assert await handle.stop(grace=3) == -signal.SIGTERM
    assert not _running(_pid(procs.dir / "child.pid"))
    # Stopping again only reports the status.
    assert await handle.stop() == -signal.SIGTERM


async def test_stop_reaches_a_group_whose_leader_already_exited(procs: Procs) -> None:
    script = 'sleep 60 & echo $! > "$D/child.pid"'
    handle = procs.keep(await spawn_process(["sh", "-c", script], env=procs.env))
    assert await handle.wait() == 0
    child = _pid(procs.dir / "child.pid")
    assert _running(child)
    assert await handle.stop(grace=3) == 0
    assert not _running(child)


async def test_stop_continues_a_stopped_process(procs: Procs) -> None:
    handle = procs.keep(await spawn_process(["sleep", "60"], env=procs.env))
    os.kill(handle.pid, signal.SIGSTOP)
    await _until(lambda: _state(handle.pid) == "T")
    started = anyio.current_time()
    # SIGTERM stays pending in a stopped process: without SIGCONT this would need SIGKILL.
    assert await handle.stop(grace=3) == -signal.SIGTERM
    assert anyio.current_time() - started < 1


async def test_returncode_reaps_without_waiting(procs: Procs) -> None:
    handle = procs.keep(await spawn_process(["sh", "-c", "exit 7"], env=procs.env))
    await _until(lambda: handle.returncode is not None)
    assert handle.returncode == 7
    assert _state(handle.pid) is None


async def test_wait_is_cancellable(procs: Procs) -> None:
    handle = procs.keep(await spawn_process(["sleep", "60"], env=procs.env))
    started = anyio.current_time()
    with anyio.move_on_after(0.1):
        await handle.wait()
    assert anyio.current_time() - started < 0.1 + SLACK
    assert handle.returncode is None
    assert await handle.stop() == -signal.SIGTERM


async def test_a_dropped_handle_neither_warns_nor_leaves_a_zombie(procs: Procs) -> None:
    handle = await spawn_process(["sleep", "60"], env=procs.env)
    pid = handle.pid
    (procs.dir / "dropped.pid").write_text(f"{pid}\n")
    del handle
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    os.kill(pid, signal.SIGKILL)
    await _until(lambda: _state(pid) == "Z")
    # The next spawn reaps what ended.
    other = procs.keep(await spawn_process(["true"], env=procs.env))
    assert _state(pid) is None
    assert await other.wait() == 0


async def test_local_host_delegates(procs: Procs) -> None:
    host = LocalHost("here")
    assert repr(host) == "LocalHost('here')"
    assert LocalHost().name == os.uname().nodename
    assert (await host.run(["echo", "hi"], env=procs.env)).stdout == b"hi\n"
    handle = procs.keep(await host.spawn(["sleep", "60"], env=procs.env))
    assert os.getpgid(handle.pid) == handle.pid
    assert await handle.stop() == -signal.SIGTERM


# --- threads ---------------------------------------------------------------------------------


async def test_runs_from_an_event_loop_in_a_worker_thread(anyio_backend: str, procs: Procs) -> None:
    # asyncio reaps through a child watcher; it must work from a loop outside the main thread.
    async def in_thread() -> tuple[bytes, int]:
        result = await run_process(["echo", "hi"], env=procs.env)
        with pytest.raises(ActionTimeout):
            await run_process(["sleep", "60"], env=procs.env, timeout=0.2)
        handle = procs.keep(await spawn_process(["sleep", "60"], env=procs.env))
        return result.stdout, await handle.stop()

    run = partial(anyio.run, in_thread, backend=anyio_backend)
    assert await anyio.to_thread.run_sync(run) == (b"hi\n", -signal.SIGTERM)
