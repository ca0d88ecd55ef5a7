"""Mode ``supervised`` with real processes: pid watching, adoption, pid reuse, stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from lifekit.kit import Outcome

pytestmark = pytest.mark.anyio

OK = Outcome.OK
NOT_RUNNING = Outcome.NOT_RUNNING
DEGRADED = Outcome.DEGRADED
SOFT = Outcome.SOFT_FAILURE
HARD = Outcome.HARD_FAILURE


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"mode": "supervised", "command": ["sleep", "60"], **extra}


def _stat(pid: int) -> list[bytes] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):  # gone, even mid-read
        return None
    return data[data.rindex(b")") + 2 :].split()


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def group(pgid: int) -> list[int]:
    """Live members of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                members.append(int(entry))
    return members


def reaped(pid: int) -> bool:
    """No /proc entry at all: not even a zombie."""
    return not Path(f"/proc/{pid}").exists()


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def pidfile(harness: Any, tag: str) -> Path:
    return harness.state_dir / f"{tag}.pid"


def recorded_pid(harness: Any, tag: str) -> int:
    return int(json.loads(pidfile(harness, tag).read_text())["pid"])


async def test_restore_remove_quickcheck_lifecycle(harness: Any) -> None:
    web = harness.resource("web", sleeper())
    assert (await harness.quickcheck(web, probe=True)).outcome is NOT_RUNNING

    first = await harness.restore(web)
    assert first.outcome is OK, first
    pid = recorded_pid(harness, "web")
    assert running(pid)
    assert f"started pid {pid}" in first.reason
    record = json.loads(pidfile(harness, "web").read_text())
    assert record["argv"] == ["sleep", "60"]
    assert record["start_time"] == int(_stat(pid)[19])  # type: ignore[index]
    assert (harness.state_dir / "web.log").exists()

    second = await harness.restore(web)
    assert second.outcome is OK, second
    assert recorded_pid(harness, "web") == pid, "a second restore must not start a second copy"
    assert (await harness.quickcheck(web)).outcome is OK

    removed = await harness.remove(web)
    assert removed.outcome is OK, removed
    assert "with SIGTERM" in removed.reason
    assert reaped(pid), "our own child must be reaped, not left a zombie"
    assert not pidfile(harness, "web").exists()
    assert (await harness.remove(web)).outcome is OK
    after = await harness.quickcheck(web)
    assert after.outcome is NOT_RUNNING
    assert "no pidfile" in after.reason


async def test_program_missing(harness: Any, tmp_path: Path) -> None:
    missing = str(tmp_path / "not-installed")
    web = harness.resource("web", {"mode": "supervised", "command": [missing]})
    await harness.missing(web, "no pidfile")
    started = await harness.restore(web)
    assert started.outcome is HARD, started
    assert "not-installed" in started.reason
    assert not pidfile(harness, "web").exists()
    assert (await harness.remove(web)).outcome is OK


async def test_bad_cwd_is_a_hard_failure(harness: Any, tmp_path: Path) -> None:
    web = harness.resource("web", sleeper(cwd=str(tmp_path / "no-such-dir")))
    started = await harness.restore(web)
    assert started.outcome is HARD, started
    assert "cannot run" in started.reason


async def test_killed_application_is_detected_and_recovered(harness: Any) -> None:
    web = harness.resource("web", sleeper())
    assert (await harness.restore(web)).outcome is OK
    pid = recorded_pid(harness, "web")

    os.kill(pid, signal.SIGKILL)
    found = await harness.eventually(web, "not_running")
    assert found.outcome is NOT_RUNNING, found
    assert f"pid {pid} was killed by SIGKILL" in found.reason

    recovered = await harness.recover(web)
    assert recovered.outcome is OK, recovered
    new_pid = recorded_pid(harness, "web")
    assert new_pid != pid
    assert running(new_pid)
    assert (await harness.quickcheck(web)).outcome is OK


async def test_exit_status_and_last_output_are_reported(harness: Any, python: str) -> None:
    web = harness.resource(
        "web", {"mode": "supervised", "command": [python, "-c", "print('bye now'); exit(3)"]}
    )
    assert (await harness.restore(web)).outcome is OK
    found = await harness.eventually(web, "not_running")
    assert found.outcome is NOT_RUNNING, found
    assert "exited with status 3" in found.reason
    assert "last output: bye now" in found.reason


async def test_a_restarted_lifekit_adopts_the_process(harness: Any) -> None:
    web = harness.resource("web", sleeper())
    assert (await harness.restore(web)).outcome is OK
    pid = recorded_pid(harness, "web")

    restarted = harness.new_kit()
    adopted = await harness.quickcheck(web, kit=restarted)
    assert adopted.outcome is OK, adopted
    again = await harness.restore(web, kit=restarted)
    assert again.outcome is OK, again
    assert recorded_pid(harness, "web") == pid, "an adopted process must not be restarted"

    removed = await harness.remove(web, kit=restarted)
    assert removed.outcome is OK, removed
    assert not running(pid)
    assert (await harness.quickcheck(web, kit=restarted)).outcome is NOT_RUNNING
    # The first kit object still holds the child: its quickcheck reaps it.
    assert (await harness.quickcheck(web)).outcome is NOT_RUNNING
    assert reaped(pid)


async def test_an_adopted_process_that_died_unreaped_is_not_running(harness: Any) -> None:
    web = harness.resource("web", sleeper())
    assert (await harness.restore(web)).outcome is OK
    pid = recorded_pid(harness, "web")
    os.kill(pid, signal.SIGKILL)
    # Nobody reaps it: to the restarted kit it is a zombie, which must count as dead.
    await harness.wait_until(lambda: not running(pid))
    restarted = harness.new_kit()
    found = await harness.quickcheck(web, kit=restarted)
    assert found.outcome is NOT_RUNNING, found
    assert "zombie" in found.reason
    assert (await harness.recover(web, kit=restarted)).outcome is OK
    assert (await harness.quickcheck(web, kit=restarted)).outcome is OK


async def _stranger() -> subprocess.Popen[bytes]:
    # Started by the test, not by the kit, standing in for a process that got a reused pid.
    return subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220


@pytest.mark.parametrize("mismatch", ["start_time", "boot_id"])
async def test_a_reused_pid_is_not_running_and_never_signalled(harness: Any, mismatch: str) -> None:
    stranger = await _stranger()
    try:
        fields = _stat(stranger.pid)
        assert fields is not None
        record = {
            "pid": stranger.pid,
            "start_time": int(fields[19]),
            "boot_id": boot_id(),
            "argv": ["sleep", "60"],
        }
        if mismatch == "start_time":
            record["start_time"] -= 1
        else:
            record["boot_id"] = "00000000-0000-0000-0000-000000000000"
        pidfile(harness, "web").write_text(json.dumps(record))
        web = harness.resource("web", sleeper())

        found = await harness.quickcheck(web)
        assert found.outcome is NOT_RUNNING, found
        expected = "another process" if mismatch == "start_time" else "earlier boot"
        assert expected in found.reason

        removed = await harness.remove(web)
        assert removed.outcome is OK, removed
        assert "not signalled" in removed.reason
        assert running(stranger.pid), "remove signalled a process that is not ours"
        assert not pidfile(harness, "web").exists()

        pidfile(harness, "web").write_text(json.dumps(record))
        assert (await harness.restore(web)).outcome is OK
        assert recorded_pid(harness, "web") != stranger.pid
        assert running(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


async def test_an_unreadable_pidfile_is_ignored(harness: Any) -> None:
    pidfile(harness, "web").write_text("12345\n")
    web = harness.resource("web", sleeper())
    assert (await harness.quickcheck(web)).outcome is NOT_RUNNING
    assert (await harness.restore(web)).outcome is OK
    assert (await harness.quickcheck(web)).outcome is OK


async def test_stop_timeout_then_sigkill(harness: Any, python: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = (
        "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    web = harness.resource(
        "web",
        {
            "mode": "supervised",
            "command": [python, "-c", stubborn],
            "ready_check": ["test", "-e", str(ready)],
            "stop_timeout": 0.3,
        },
    )
    assert (await harness.restore(web)).outcome is OK
    pid = recorded_pid(harness, "web")
    started = anyio.current_time()
    removed = await harness.remove(web)
    assert removed.outcome is OK, removed
    assert anyio.current_time() - started >= 0.3
    assert "SIGKILL" in removed.reason
    assert "stop_timeout=0.3" in removed.reason
    assert not running(pid)


async def test_stop_signal_is_used(harness: Any, python: str, tmp_path: Path) -> None:
    ready, caught = tmp_path / "ready", tmp_path / "caught"
    program = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "def stop(*_):\n"
        f"    pathlib.Path({str(caught)!r}).write_text('INT')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    web = harness.resource(
        "web",
        {
            "mode": "supervised",
            "command": [python, "-c", program],
            "ready_check": ["test", "-e", str(ready)],
            "stop_signal": "INT",
            "stop_timeout": 10,
        },
    )
    assert (await harness.restore(web)).outcome is OK
    started = anyio.current_time()
    removed = await harness.remove(web)
    assert removed.outcome is OK, removed
    assert "with SIGINT" in removed.reason
    assert anyio.current_time() - started < 5
    assert caught.read_text() == "INT"


async def start_group(harness: Any) -> tuple[Any, int, list[int]]:
    """A supervised shell with two helpers in its process group: (resource, leader, helpers)."""
    web = harness.resource(
        "web", {"mode": "supervised", "command": ["sh", "-c", "sleep 60 & sleep 60 & wait"]}
    )
    assert (await harness.restore(web)).outcome is OK
    pid = recorded_pid(harness, "web")
    await harness.wait_until(lambda: len(group(pid)) >= 3)
    return web, pid, [member for member in group(pid) if member != pid]


async def test_the_whole_process_group_is_stopped(harness: Any) -> None:
    web, pid, helpers = await start_group(harness)
    assert (await harness.remove(web)).outcome is OK
    assert group(pid) == []
    assert not any(running(helper) for helper in helpers)


async def test_helpers_left_by_a_dead_leader_are_cleared_before_a_new_start(
    harness: Any,
) -> None:
    web, pid, helpers = await start_group(harness)
    os.kill(pid, signal.SIGKILL)  # the leader only
    assert (await harness.eventually(web, "not_running")).outcome is NOT_RUNNING
    assert all(running(helper) for helper in helpers)
    assert (await harness.restore(web)).outcome is OK
    assert not any(running(helper) for helper in helpers)
    assert recorded_pid(harness, "web") != pid


async def test_check_runs_while_the_pid_is_alive(harness: Any, python: str, tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("0")
    check = [python, "-c", f"import sys; sys.exit(int(open({str(status)!r}).read()))"]
    web = harness.resource("web", sleeper(check=check))
    assert (await harness.restore(web)).outcome is OK
    assert (await harness.quickcheck(web)).outcome is OK
    status.write_text("190")
    assert (await harness.quickcheck(web)).outcome is DEGRADED
    status.write_text("7")
    hung = await harness.quickcheck(web)
    # Alive but not doing its job: a soft failure, so that recover restarts it.
    assert hung.outcome is SOFT, hung
    assert "but check: not running" in hung.reason
    status.write_text("0")
    assert (await harness.recover(web)).outcome is OK
    assert (await harness.quickcheck(web)).outcome is OK


async def test_a_check_that_cannot_run_is_a_soft_failure(harness: Any, tmp_path: Path) -> None:
    web = harness.resource("web", sleeper(check=[str(tmp_path / "no-check")]))
    assert (await harness.restore(web)).outcome is OK
    found = await harness.quickcheck(web)
    assert found.outcome is SOFT, found
    assert "no-check" in found.reason


async def test_ready_check_makes_restore_wait(harness: Any, python: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    slow = f"import pathlib, time; time.sleep(0.4); pathlib.Path({str(ready)!r}).touch(); "
    slow += "time.sleep(60)"
    web = harness.resource(
        "web",
        {
            "mode": "supervised",
            "command": [python, "-c", slow],
            "ready_check": ["test", "-e", str(ready)],
        },
    )
    started = anyio.current_time()
    result = await harness.restore(web)
    assert result.outcome is OK, result
    assert "ready_check passed" in result.reason
    assert anyio.current_time() - started >= 0.4
    assert ready.exists()


async def test_a_process_dying_before_ready_fails_the_restore(harness: Any, python: str) -> None:
    web = harness.resource(
        "web",
        {
            "mode": "supervised",
            "command": [python, "-c", "import time; time.sleep(0.2); print('no config'); exit(2)"],
            "ready_check": ["false"],
        },
    )
    result = await harness.restore(web)
    assert result.outcome is SOFT, result
    assert "exited with status 2" in result.reason
    assert "no config" in result.reason
    assert "before ready_check passed" in result.reason


async def test_a_ready_check_that_cannot_run_is_a_hard_failure(
    harness: Any, tmp_path: Path
) -> None:
    web = harness.resource("web", sleeper(ready_check=[str(tmp_path / "no-ready")]))
    result = await harness.restore(web)
    assert result.outcome is HARD, result
    assert (await harness.remove(web)).outcome is OK


async def test_a_cancelled_restore_leaves_nothing_remove_cannot_clean(harness: Any) -> None:
    web = harness.resource("web", sleeper(ready_check=["false"]))
    with anyio.move_on_after(0.3) as scope:
        await harness.restore(web)
    assert scope.cancelled_caught
    pid = recorded_pid(harness, "web")
    assert running(pid)
    assert (await harness.remove(web)).outcome is OK
    assert not running(pid)
    assert (await harness.quickcheck(web)).outcome is NOT_RUNNING


async def test_env_and_cwd(harness: Any, python: str, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    program = (
        "import os, time; open('out', 'w').write(os.environ['GREETING'] + ' ' + os.getcwd()); "
        "time.sleep(60)"
    )
    web = harness.resource(
        "web",
        {
            "mode": "supervised",
            "command": [python, "-c", program],
            "env": ["GREETING=hi"],
            "cwd": str(workdir),
            "ready_check": ["test", "-s", str(workdir / "out")],
        },
    )
    assert (await harness.restore(web)).outcome is OK
    assert (workdir / "out").read_text() == f"hi {workdir}"


async def test_a_tag_is_never_a_path(harness: Any) -> None:
    web = harness.resource("../web", sleeper())
    assert (await harness.restore(web)).outcome is OK
    assert (harness.state_dir / "..%2Fweb.pid").exists()
    assert not (harness.tmp_path / "web.pid").exists()
    assert (await harness.remove(web)).outcome is OK
