"""Mode ``commands`` with real processes: an LSB init script, and the exit-status tables."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from lifekit.kit import Outcome, Resource

pytestmark = pytest.mark.anyio

LSB_APP = str(Path(__file__).parent / "fixtures" / "lsb_app.py")

OK = Outcome.OK
NOT_RUNNING = Outcome.NOT_RUNNING
DEGRADED = Outcome.DEGRADED
SOFT = Outcome.SOFT_FAILURE
HARD = Outcome.HARD_FAILURE
FATAL = Outcome.FATAL


def lsb_params(python: str, pidfile: Path, **extra: Any) -> dict[str, Any]:
    """An LSB init script driven as start/stop/check commands."""
    return {
        "mode": "commands",
        "start": [python, LSB_APP, str(pidfile), "start"],
        "stop": [python, LSB_APP, str(pidfile), "stop"],
        "check": [python, LSB_APP, str(pidfile), "status"],
        **extra,
    }


def exiting(python: str, code: int) -> list[str]:
    """A command that writes two lines to stderr and exits with ``code``."""
    return [
        python,
        "-c",
        f"import sys; sys.stderr.write('first line\\nlast words {code}\\n'); sys.exit({code})",
    ]


def app_pid(pidfile: Path) -> int:
    return int(pidfile.read_text())


async def test_restore_remove_quickcheck_lifecycle(harness: Any, python: str) -> None:
    pidfile = harness.tmp_path / "web.app.pid"
    web = harness.resource("web", lsb_params(python, pidfile))

    assert (await harness.quickcheck(web, probe=True)).outcome is NOT_RUNNING
    first = await harness.restore(web)
    assert first.outcome is OK, first
    pid = app_pid(pidfile)
    second = await harness.restore(web)
    assert second.outcome is OK, second
    assert "already running" in second.reason
    assert app_pid(pidfile) == pid, "a second restore must not start a second copy"
    assert (await harness.quickcheck(web)).outcome is OK

    assert (await harness.remove(web)).outcome is OK
    assert _dead(pid)
    assert (await harness.remove(web)).outcome is OK
    after = await harness.quickcheck(web)
    assert after.outcome is NOT_RUNNING
    assert "not running" in after.reason


def _dead(pid: int) -> bool:
    """Gone, or a zombie (an orphan nobody reaps on a machine whose PID 1 does not)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):  # gone, even mid-read
        return True
    return data[data.rindex(b")") + 2 :].split()[0] == b"Z"


async def test_program_missing_is_not_running_for_check_and_hard_for_start(
    harness: Any, tmp_path: Path
) -> None:
    missing = str(tmp_path / "not-installed")
    web = harness.resource(
        "web", {"mode": "commands", "start": [missing], "stop": [missing], "check": [missing]}
    )
    await harness.missing(web, "not-installed")
    started = await harness.restore(web)
    assert started.outcome is HARD, started
    assert "start: cannot run" in started.reason
    assert "not-installed" in started.reason


async def test_killed_application_is_detected_and_recovered(harness: Any, python: str) -> None:
    pidfile = harness.tmp_path / "web.app.pid"
    web = harness.resource("web", lsb_params(python, pidfile))
    assert (await harness.restore(web)).outcome is OK
    pid = app_pid(pidfile)

    os.kill(pid, signal.SIGKILL)
    found = await harness.eventually(web, "not_running")
    assert found.outcome is NOT_RUNNING, found
    assert "pidfile" in found.reason  # LSB status 1: dead, but the pidfile remains

    recovered = await harness.recover(web)
    assert recovered.outcome is OK, recovered
    assert app_pid(pidfile) != pid
    assert (await harness.quickcheck(web)).outcome is OK


async def test_recover_runs_the_recover_command_when_given(
    harness: Any, python: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "web.app.pid"
    ran = tmp_path / "recover-ran"
    recover = [python, "-c", f"open({str(ran)!r}, 'w').write('yes')"]
    web = harness.resource("web", lsb_params(python, pidfile, recover=recover))
    result = await harness.recover(web)
    assert result.outcome is OK, result
    assert ran.read_text() == "yes"
    assert not pidfile.exists(), "stop and start must not run when recover is given"


async def test_recover_stops_at_a_failed_stop(harness: Any, python: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "web.app.pid"
    web = harness.resource("web", lsb_params(python, pidfile, stop=exiting(python, 1)))
    result = await harness.recover(web)
    assert result.outcome is SOFT, result
    assert result.reason.startswith("recover: stop: failed")
    assert not pidfile.exists(), "start must not run after stop failed"


async def test_env_and_cwd_reach_every_command(harness: Any, python: str, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    write = "import os; open('out', 'w').write(os.environ['GREETING'] + ' ' + os.getcwd())"
    check = "import os, sys; sys.exit(0 if os.path.exists('out') else 3)"
    web = harness.resource(
        "web",
        {
            "mode": "commands",
            "start": [python, "-c", write],
            "stop": [python, "-c", "import os; os.remove('out')"],
            "check": [python, "-c", check],
            "env": ["GREETING=hello world"],
            "cwd": str(workdir),
        },
    )
    assert (await harness.restore(web)).outcome is OK
    assert (workdir / "out").read_text() == f"hello world {workdir}"
    assert (await harness.quickcheck(web)).outcome is OK
    assert (await harness.remove(web)).outcome is OK
    assert (await harness.quickcheck(web)).outcome is NOT_RUNNING


#: Exit status of ``check`` -> what quickcheck reports (docs/app-kit.md, "Exit statuses").
CHECK_TABLE = [
    (0, OK),
    (1, NOT_RUNNING),
    (3, NOT_RUNNING),
    (7, NOT_RUNNING),
    (190, DEGRADED),
    (2, HARD),
    (4, HARD),
    (5, HARD),
    (6, FATAL),
    (8, SOFT),
    (191, SOFT),
    (255, SOFT),
]

#: Exit status of ``start`` / ``stop`` -> what restore / remove report.
ACTION_TABLE = [
    (0, OK),
    (1, SOFT),
    (2, HARD),
    (3, HARD),
    (4, HARD),
    (5, HARD),
    (6, FATAL),
    (7, SOFT),
    (190, SOFT),
]


def _reason_shows_the_command(reason: str, what: str, python: str, code: int) -> None:
    assert reason.startswith(f"{what}: ")
    assert python in reason  # argv[0]
    assert f"exited with status {code}" in reason
    assert f"last words {code}" in reason  # the last line of stderr
    assert "first line" not in reason


@pytest.mark.parametrize(("code", "outcome"), CHECK_TABLE)
async def test_check_exit_status_table(
    harness: Any, python: str, code: int, outcome: Outcome
) -> None:
    web = harness.resource(
        "web",
        {"mode": "commands", "start": ["true"], "stop": ["true"], "check": exiting(python, code)},
    )
    result = await harness.quickcheck(web)
    assert result.outcome is outcome, result
    _reason_shows_the_command(result.reason, "check", python, code)


async def test_check_killed_by_a_signal_is_a_soft_failure(harness: Any, python: str) -> None:
    suicide = [python, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    web = harness.resource(
        "web", {"mode": "commands", "start": ["true"], "stop": ["true"], "check": suicide}
    )
    result = await harness.quickcheck(web)
    assert result.outcome is SOFT, result
    assert "killed by SIGKILL" in result.reason


@pytest.mark.parametrize(("code", "outcome"), ACTION_TABLE)
async def test_start_and_stop_exit_status_table(
    harness: Any, python: str, code: int, outcome: Outcome
) -> None:
    web: Resource = harness.resource(
        "web",
        {
            "mode": "commands",
            "start": exiting(python, code),
            "stop": exiting(python, code),
            "check": exiting(python, 3),  # not running, so restore runs start
        },
    )
    started = await harness.restore(web)
    assert started.outcome is outcome, started
    _reason_shows_the_command(started.reason, "start", python, code)
    stopped = await harness.remove(web)
    assert stopped.outcome is outcome, stopped
    _reason_shows_the_command(stopped.reason, "stop", python, code)


async def test_restore_of_a_degraded_application_reports_degraded(
    harness: Any, python: str, tmp_path: Path
) -> None:
    started = tmp_path / "start-ran"
    web = harness.resource(
        "web",
        {
            "mode": "commands",
            "start": [python, "-c", f"open({str(started)!r}, 'w')"],
            "stop": ["true"],
            "check": exiting(python, 190),
        },
    )
    result = await harness.restore(web)
    assert result.outcome is DEGRADED, result
    assert not started.exists(), "a running (degraded) application must not be started again"
