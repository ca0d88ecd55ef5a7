"""Mode ``systemd`` against a fake ``systemctl`` (no systemd runs here).

The fake, ``fixtures/fake_systemctl.py``, transcribes systemctl(1) of systemd 252 (see its
header) and runs real processes as the units' main processes. Outputs the fake cannot produce
(other systemd versions, a machine without systemd) are stubbed with one-line scripts whose
text is quoted from the same sources. Untested against a real systemd.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from lifekit.kit import Outcome

pytestmark = pytest.mark.anyio

FAKE = Path(__file__).parent / "fixtures" / "fake_systemctl.py"

OK = Outcome.OK
NOT_RUNNING = Outcome.NOT_RUNNING
DEGRADED = Outcome.DEGRADED
SOFT = Outcome.SOFT_FAILURE
HARD = Outcome.HARD_FAILURE
FATAL = Outcome.FATAL


class FakeSystemd:
    """A fake service manager in a directory, reached through a ``systemctl`` script."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "units").mkdir(parents=True)
        (root / "bin").mkdir()
        self.systemctl = root / "bin" / "systemctl"
        self.systemctl.write_text(
            "#!/bin/sh\n"
            f"FAKE_SYSTEMCTL_ROOT={shlex.quote(str(root))} "
            f'exec {shlex.quote(sys.executable)} -I {shlex.quote(str(FAKE))} "$@"\n'
        )
        self.systemctl.chmod(0o755)

    def unit(self, name: str, exec_start: str) -> None:
        (self.root / "units" / name).write_text(f"[Service]\nExecStart={exec_start}\n")

    def mainpid(self, name: str) -> int | None:
        try:
            return int((self.root / "run" / name / "mainpid").read_text())
        except FileNotFoundError:
            return None

    def set_state(self, name: str, state: str) -> None:
        """Show an ActiveState the fake does not reach by itself (activating, reloading...)."""
        (self.root / "run" / name).mkdir(parents=True, exist_ok=True)
        (self.root / "run" / name / "state").write_text(state + "\n")


@pytest.fixture
def fake(tmp_path: Path) -> FakeSystemd:
    systemd = FakeSystemd(tmp_path / "systemd")
    systemd.unit("web.service", "sleep 60")
    return systemd


def unit_params(fake: FakeSystemd, unit: str = "web.service") -> dict[str, Any]:
    return {"mode": "systemd", "unit": unit, "systemctl": str(fake.systemctl)}


def stub(tmp_path: Path, name: str, *, stdout: str = "", stderr: str = "", code: int) -> str:
    """A one-off ``systemctl`` that prints what a real one printed and exits ``code``."""
    script = tmp_path / name
    script.write_text(
        "#!/bin/sh\n"
        f"printf %s {shlex.quote(stdout)}\n"
        f"printf %s {shlex.quote(stderr)} >&2\n"
        f"exit {code}\n"
    )
    script.chmod(0o755)
    return str(script)


async def started(harness: Any, fake: FakeSystemd) -> tuple[Any, int]:
    """The unit web.service restored: (resource, its main pid)."""
    web = harness.resource("web", unit_params(fake))
    assert (await harness.restore(web)).outcome is OK
    pid = fake.mainpid("web.service")
    assert pid is not None
    return web, pid


async def test_restore_remove_quickcheck_lifecycle(harness: Any, fake: FakeSystemd) -> None:
    web = harness.resource("web", unit_params(fake))
    probe = await harness.quickcheck(web, probe=True)
    assert probe.outcome is NOT_RUNNING, probe
    assert "unit web.service is inactive" in probe.reason

    assert (await harness.restore(web)).outcome is OK
    pid = fake.mainpid("web.service")
    assert pid is not None
    assert (await harness.restore(web)).outcome is OK
    assert fake.mainpid("web.service") == pid, "start on an active unit is a no-op"
    found = await harness.quickcheck(web)
    assert found.outcome is OK, found
    assert "unit web.service is active" in found.reason

    assert (await harness.remove(web)).outcome is OK
    assert fake.mainpid("web.service") is None
    assert (await harness.remove(web)).outcome is OK
    assert (await harness.quickcheck(web)).outcome is NOT_RUNNING


async def test_a_unit_name_without_suffix_is_a_service(harness: Any, fake: FakeSystemd) -> None:
    web = harness.resource("web", unit_params(fake, "web"))
    assert (await harness.restore(web)).outcome is OK
    assert fake.mainpid("web.service") is not None
    assert (await harness.remove(web)).outcome is OK


async def test_systemctl_missing(harness: Any, tmp_path: Path) -> None:
    web = harness.resource(
        "web", {"mode": "systemd", "unit": "web.service", "systemctl": str(tmp_path / "nope")}
    )
    await harness.missing(web, "systemctl cannot run")
    started = await harness.restore(web)
    assert started.outcome is HARD, started
    assert "systemctl start web.service: cannot run" in started.reason


async def test_unit_missing(harness: Any, fake: FakeSystemd) -> None:
    web = harness.resource("web", unit_params(fake, "nosuch.service"))
    await harness.missing(web, "no such unit")
    await harness.missing(web, "exited with status 4")
    started = await harness.restore(web)
    assert started.outcome is HARD, started
    assert "Unit nosuch.service not found." in started.reason
    assert "exited with status 5" in started.reason
    removed = await harness.remove(web)
    assert removed.outcome is OK, removed
    assert "not loaded" in removed.reason


async def test_a_main_process_stopped_cleanly_is_not_running(
    harness: Any, fake: FakeSystemd
) -> None:
    web, pid = await started(harness, fake)
    os.kill(pid, signal.SIGTERM)  # a clean end for systemd: the unit becomes inactive
    found = await harness.eventually(web, "not_running")
    assert found.outcome is NOT_RUNNING, found
    assert "inactive" in found.reason
    assert (await harness.recover(web)).outcome is OK
    assert (await harness.quickcheck(web)).outcome is OK
    assert fake.mainpid("web.service") not in (None, pid)


async def test_a_killed_main_process_fails_the_unit_and_recover_restarts_it(
    harness: Any, fake: FakeSystemd
) -> None:
    web, pid = await started(harness, fake)
    os.kill(pid, signal.SIGKILL)  # not a clean end: the unit becomes failed
    found = await harness.eventually(web, "soft_failure")
    assert found.outcome is SOFT, found
    assert "unit web.service is failed" in found.reason

    recovered = await harness.recover(web)
    assert recovered.outcome is OK, recovered
    assert "systemctl restart web.service" in recovered.reason
    new_pid = fake.mainpid("web.service")
    assert new_pid not in (None, pid)
    assert (await harness.quickcheck(web)).outcome is OK


async def test_remove_clears_a_failed_unit(harness: Any, fake: FakeSystemd) -> None:
    web, pid = await started(harness, fake)
    os.kill(pid, signal.SIGKILL)
    assert (await harness.eventually(web, "soft_failure")).outcome is SOFT
    # stop leaves a failed unit failed; remove also resets it, so it reads as stopped.
    assert (await harness.remove(web)).outcome is OK
    assert (await harness.quickcheck(web)).outcome is NOT_RUNNING


#: ActiveState printed by is-active (exit status set by the fake as systemd 252 does) ->
#: what quickcheck reports (docs/app-kit.md, "systemd states").
STATE_TABLE = [
    ("active", OK),
    ("reloading", OK),
    ("activating", DEGRADED),
    ("inactive", NOT_RUNNING),
    ("failed", SOFT),
    ("deactivating", SOFT),
    ("maintenance", SOFT),
]


@pytest.mark.parametrize(("state", "outcome"), STATE_TABLE)
async def test_is_active_state_table(
    harness: Any, fake: FakeSystemd, state: str, outcome: Outcome
) -> None:
    fake.set_state("web.service", state)
    web = harness.resource("web", unit_params(fake))
    found = await harness.quickcheck(web)
    assert found.outcome is outcome, found
    assert f"unit web.service is {state}" in found.reason
    assert "exited with status" in found.reason


@pytest.mark.parametrize(
    "case",
    [
        # systemd 257 and later: a unit refreshing its mount namespace is still active.
        ("refreshing\n", "", 0, OK, "is refreshing"),
        # systemd before 231 printed "unknown" for a unit it could not find.
        ("unknown\n", "", 3, NOT_RUNNING, "is unknown"),
        # This machine: systemd installed but not running as PID 1 (systemctl 252, verbatim).
        (
            "",
            "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
            "Failed to connect to bus: Host is down\n",
            1,
            SOFT,
            "Failed to connect to bus: Host is down",
        ),
    ],
    ids=["refreshing", "unknown", "no-systemd"],
)
async def test_is_active_outputs_of_other_systemds(
    harness: Any, tmp_path: Path, case: tuple[str, str, int, Outcome, str]
) -> None:
    stdout, stderr, code, outcome, shown = case
    systemctl = stub(tmp_path, "systemctl", stdout=stdout, stderr=stderr, code=code)
    web = harness.resource("web", {"mode": "systemd", "unit": "web", "systemctl": systemctl})
    found = await harness.quickcheck(web)
    assert found.outcome is outcome, found
    assert shown in found.reason


@pytest.mark.parametrize(
    ("stderr", "code", "outcome"),
    [
        # src/systemctl/systemctl-start-unit.c after a failed job (exit status 1).
        (
            "Job for web.service failed because the control process exited with error code.\n"
            'See "systemctl status web.service" and "journalctl -xeu web.service" for details.\n',
            1,
            SOFT,
        ),
        # BUS_ERROR_LOAD_FAILED: a broken unit file, translated to exit status 6.
        (
            "Failed to start web.service: Unit web.service failed to load properly, please "
            "adjust/correct and reload service manager: Invalid argument\n",
            6,
            FATAL,
        ),
        # SD_BUS_ERROR_ACCESS_DENIED, translated to exit status 4.
        ("Failed to start web.service: Access denied\n", 4, HARD),
    ],
    ids=["job-failed", "load-failed", "access-denied"],
)
async def test_start_failures(
    harness: Any, tmp_path: Path, stderr: str, code: int, outcome: Outcome
) -> None:
    systemctl = stub(tmp_path, "systemctl", stderr=stderr, code=code)
    web = harness.resource("web", {"mode": "systemd", "unit": "web", "systemctl": systemctl})
    started = await harness.restore(web)
    assert started.outcome is outcome, started
    assert started.reason.startswith("systemctl start web: ")
    assert stderr.strip().splitlines()[-1] in started.reason
    # The same table reads stop: only "not loaded" (5) is success there.
    stopped = await harness.remove(web)
    assert stopped.outcome is outcome, stopped
