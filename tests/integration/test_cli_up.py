"""`lifekit up`, `lifekit status` and `lifekit demo` as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.support import alive

LIFEKIT = [sys.executable, "-m", "lifekit._cli"]

CONFIG = """
config_version = 1

[node]
name = "t1"
state_dir = "{state}"

[defaults]
quickcheck_interval = 0.2

[resources.worker]
kind = "app"
params = {{ mode = "supervised", command = ["sleep", "600"] }}

[resources.front]
kind = "app"
depends_on = ["worker"]
params = {{ mode = "supervised", command = ["sleep", "601"] }}
"""


def _status(socket_path: Path) -> tuple[int, dict | None]:
    result = subprocess.run(
        [*LIFEKIT, "status", "--json", "--socket", str(socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode, json.loads(result.stdout) if result.returncode in (0, 4) else None


def _wait_in_service(socket_path: Path) -> dict:
    """Poll `lifekit status` until the hierarchy is ISP; return that document."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, document = _status(socket_path)
        if document and document["hierarchies"][0]["state"] == "ISP":
            return document
        time.sleep(0.2)
    raise AssertionError("lifekit up never served an in-service status")


def test_up_serves_status_and_ctrl_c_takes_everything_out(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(state=state))
    socket_path = tmp_path / "run" / "lifekit.sock"
    process = subprocess.Popen(
        [*LIFEKIT, "up", str(config), "--no-tree", "--socket", str(socket_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        document = _wait_in_service(socket_path)
        code, _ = _status(socket_path)
        assert code == 0
        hierarchy = document["hierarchies"][0]
        assert hierarchy["root"] == "front"
        assert [r["state"] for r in hierarchy["resources"]] == ["ISP", "ISP"]
        pids.extend(
            json.loads((state / f"{tag}.pid").read_text())["pid"] for tag in ("worker", "front")
        )
        assert all(alive(pid) for pid in pids)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert not any(alive(pid) for pid in pids), "Ctrl-C left an application running"
        assert not socket_path.exists()
        assert "front" in out  # the event lines name the resources
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_status_without_a_node_exits_3(tmp_path: Path) -> None:
    code, _ = _status(tmp_path / "nothing.sock")
    assert code == 3


def test_up_with_a_bad_config_exits_2_and_names_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        CONFIG.format(state=tmp_path).replace('depends_on = ["worker"]', 'depends_on = ["wroker"]')
    )
    result = subprocess.run(
        [*LIFEKIT, "up", str(config), "--no-tree", "--socket", str(tmp_path / "s.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "wroker" in result.stderr


@pytest.mark.timeout(120)
def test_demo_shows_detection_recovery_and_escalation() -> None:
    result = subprocess.run(
        [*LIFEKIT, "demo", "--fast"], capture_output=True, text=True, timeout=110, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("detected and recovered locally") == 2
    assert "recovery limit reached (2 recoveries within 60 s)" in result.stdout
    assert "RecoveryLimitReached" in result.stdout
    assert "HierarchyFailed" in result.stdout


def test_a_second_up_on_the_same_socket_leaves_the_first_node_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "node.toml"
    config.write_text(CONFIG.format(state=state))
    socket_path = tmp_path / "run" / "lifekit.sock"
    first = subprocess.Popen(
        [*LIFEKIT, "up", str(config), "--no-tree", "--socket", str(socket_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pids: list[int] = []
    try:
        _wait_in_service(socket_path)
        pids = [json.loads((state / f"{t}.pid").read_text())["pid"] for t in ("worker", "front")]
        second = subprocess.run(
            [*LIFEKIT, "up", str(config), "--no-tree", "--socket", str(socket_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2
        assert "already serves" in second.stderr
        assert all(alive(pid) for pid in pids), "the second node disturbed the first"
        _, document = _status(socket_path)
        assert document is not None
        assert all(r["recent_recoveries"] == 0 for r in document["hierarchies"][0]["resources"])
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
