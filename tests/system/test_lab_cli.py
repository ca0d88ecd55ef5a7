"""The ``lifekit lab`` command, run as a real subprocess: doctor, bootstrap, up, status, exec,
down, clean, and what it says when something is wrong."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifekit.lab import Lab, clean, leftovers
from lifekit.lab._state import lab_id

pytestmark = pytest.mark.root

_TIMEOUT = 30.0


def lab_cli(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lifekit lab ARGS...`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "lifekit", "lab", *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=_TIMEOUT,
        check=False,
    )


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh lab name; whatever the test made under it is removed afterwards."""
    chosen = "clitest" + secrets.token_hex(2)
    try:
        yield chosen
    finally:
        clean(names=[chosen])


def test_doctor_reports_every_requirement_ok() -> None:
    done = lab_cli("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("OK ") for line in lines), lines
    assert any("package tgt " in line for line in lines)
    assert any(line.split()[1:2] == ["root"] for line in lines)

    document = json.loads(lab_cli("doctor", "--json").stdout)
    assert document["ok"] is True
    assert {"what": "root", "ok": True, "problem": None, "fix": None} in document["requirements"]


def test_bootstrap_twice_installs_nothing(tmp_path: Path) -> None:
    # An apt-get that leaves a mark first on PATH: bootstrap must not run it when nothing is
    # missing (every tool the checks look for is still found further down PATH).
    marker = tmp_path / "apt-get-ran"
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    for _ in range(2):
        done = lab_cli("bootstrap", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "every package is installed" in done.stdout
        assert "installing" not in done.stdout
    assert not marker.exists(), marker.read_text()


def test_up_status_exec_down(name: str) -> None:
    up = lab_cli(
        "up", "--name", name, "--nodes", "n1,n2", "--no-client", "--lun-size", "4M", "--json"
    )
    assert up.returncode == 0, up.stderr
    document = json.loads(up.stdout)
    assert document["name"] == name
    assert document["detached"] is True
    assert list(document["nodes"]) == ["n1", "n2"]
    assert document["nodes"]["n2"]["addresses"]["public"][0] == "10.88.1.12"
    assert Path(document["lun"]).stat().st_size == 4 * 1024 * 1024

    status = lab_cli("status", name, "--json")
    assert status.returncode == 0, status.stderr
    assert {node: entry["power"] for node, entry in json.loads(status.stdout)["nodes"].items()} == {
        "n1": "on",
        "n2": "on",
    }
    listing = json.loads(lab_cli("status", "--json").stdout)
    [mine] = [lab for lab in listing["labs"] if lab["name"] == name]
    assert mine["owner"] == "detached"
    assert mine["nodes"] == {"n1": "on", "n2": "on"}

    hostname = lab_cli("exec", name, "n2", "--", "hostname")
    assert (hostname.returncode, hostname.stdout) == (0, "n2\n"), hostname.stderr
    failing = lab_cli("exec", name, "n1", "--", "sh", "-c", "echo oops >&2; exit 7")
    assert (failing.returncode, failing.stderr) == (7, "oops\n")
    echoed = lab_cli("exec", name, "n1", "--", "cat", input="through stdin\n")
    assert echoed.stdout == "through stdin\n"
    # Everything after the first `--` is the command's, a later `--` and options included.
    verbatim = lab_cli("exec", name, "n1", "--", "echo", "--", "-n", "--json")
    assert verbatim.stdout == "-- -n --json\n"

    Lab.attach(name).node("n1").power_loss()
    off = lab_cli("exec", name, "n1", "--", "true")
    assert off.returncode == 1
    assert f"node 'n1' of lab {name!r} is powered off" in off.stderr, off.stderr
    assert "Traceback" not in off.stderr

    down = lab_cli("down", name)
    assert down.returncode == 0, down.stderr
    assert f"lab {name} is down" in down.stdout
    gone = lab_cli("status", name)
    assert gone.returncode == 1
    assert f"there is no lab {name!r}" in gone.stderr
    assert leftovers([lab_id(name)]) == {}


def test_up_with_bad_spec_exits_2_naming_every_problem(name: str) -> None:
    done = lab_cli("up", "--name", name, "--nodes", "n1,Node9", "--networks", "public,9x")
    assert done.returncode == 2
    assert "--nodes: invalid node name (got 'Node9')" in done.stderr, done.stderr
    assert "--networks: invalid network name (got '9x')" in done.stderr
    assert leftovers([lab_id(name)]) == {}

    size = lab_cli("up", "--name", name, "--lun-size", "64X")
    assert size.returncode == 2
    assert "invalid size '64X'" in size.stderr
    assert "64M" in size.stderr


def test_clean_removes_a_detached_lab(name: str) -> None:
    up = lab_cli("up", "--name", name, "--nodes", "n1", "--lun-size", "0")
    assert up.returncode == 0, up.stderr
    assert f"lab {name} is up (detached)" in up.stdout
    assert "10.88.1.11" in up.stdout
    assert "client" in up.stdout
    assert f"lifekit lab down {name}" in up.stdout
    assert leftovers([lab_id(name)]), "the lab made nothing?"

    done = lab_cli("clean", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"removed {name} ("), done.stdout
    assert leftovers([lab_id(name)]) == {}
    again = lab_cli("clean", name)
    assert "nothing to clean" in again.stdout


def test_exec_on_an_unknown_lab_says_how_to_find_one() -> None:
    done = lab_cli("exec", "nosuchlab", "n1", "--", "true")
    assert done.returncode == 1
    assert "there is no lab 'nosuchlab'" in done.stderr
    assert "lifekit lab status" in done.stderr
    assert "Traceback" not in done.stderr


def test_commands_that_need_root_say_so() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    for args in (["up", "--nodes", "n1"], ["down", "x"], ["exec", "x", "n1", "--", "true"]):
        done = subprocess.run(
            [*nobody, sys.executable, "-m", "lifekit", "lab", *args],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
        assert done.returncode == 1, (args, done.stderr)
        assert f"lifekit lab {args[0]}: needs root" in done.stderr
        assert "Traceback" not in done.stderr


def test_lab_help_and_lazy_import() -> None:
    done = lab_cli("--help")
    assert done.returncode == 0
    for command in ("bootstrap", "doctor", "up", "down", "exec", "status", "clean"):
        assert f"    {command} " in done.stdout
    # The other commands never import the lab.
    probe = (
        "import sys, lifekit._cli as cli; cli.main(['kits']); print('lifekit.lab' in sys.modules)"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert imported.stdout.splitlines()[-1] == "False"
