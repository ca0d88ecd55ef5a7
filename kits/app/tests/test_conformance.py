"""lifekit's kit conformance suite, run against each mode of the app kit with real processes."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from lifekit_app import AppKit

from lifekit.testing import run_conformance

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures"


def _commands(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    def lsb(action: str) -> list[str]:
        return [sys.executable, str(FIXTURES / "lsb_app.py"), str(tmp_path / "app.pid"), action]

    missing = str(tmp_path / "not-installed")
    return (
        {"mode": "commands", "start": lsb("start"), "stop": lsb("stop"), "check": lsb("status")},
        {"mode": "commands", "start": [missing], "stop": [missing], "check": [missing]},
    )


def _supervised(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    ready = [sys.executable, "-c", "import time; time.sleep(0.1)"]
    return (
        {"mode": "supervised", "command": ["sleep", "60"], "ready_check": ready},
        {"mode": "supervised", "command": [str(tmp_path / "not-installed")]},
    )


def _systemd(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    root = tmp_path / "systemd"
    (root / "units").mkdir(parents=True)
    (root / "units" / "web.service").write_text("[Service]\nExecStart=sleep 60\n")
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(
        "#!/bin/sh\n"
        f"FAKE_SYSTEMCTL_ROOT={shlex.quote(str(root))} exec {shlex.quote(sys.executable)} -I "
        f'{shlex.quote(str(FIXTURES / "fake_systemctl.py"))} "$@"\n'
    )
    systemctl.chmod(0o755)
    return (
        {"mode": "systemd", "unit": "web.service", "systemctl": str(systemctl)},
        {"mode": "systemd", "unit": "not-installed.service", "systemctl": str(systemctl)},
    )


@pytest.mark.parametrize("mode", ["commands", "supervised", "systemd"])
async def test_every_mode_passes_the_conformance_suite(
    tmp_path: Path, marker: str, mode: str
) -> None:
    params, missing = {"commands": _commands, "supervised": _supervised, "systemd": _systemd}[mode](
        tmp_path
    )
    report = await run_conformance(
        AppKit, params=params, missing_params=missing, state_dir=tmp_path / "state"
    )
    assert report.passed, str(report)
