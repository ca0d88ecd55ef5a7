"""The lab benchmark runs at smoke size, as root, prints its table and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lab.py"


def test_lab_benchmark_runs_at_smoke_size() -> None:
    finished = subprocess.run(
        [sys.executable, str(BENCHMARK), "--size", "smoke"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The benchmark checks its own leftovers (labs and peer namespaces) and exits 1 on any.
    assert finished.returncode == 0, finished.stdout + finished.stderr
    table = finished.stdout
    for row in (
        "measurement",
        "median",
        "verdict",
        "up: 3 nodes, 2 networks + san, client, LUN, tgtd",
        "down: the 3-node iSCSI lab",
        "up: the same without iSCSI",
        "power loss of n1",
        "power on of n1",
        "attach_fenced_disk() of n1",
        "up: 8 nodes, 3 networks + san",
        "peer up (3 nodes)",
        "peer down (3 nodes)",
        "no leftovers:",
    ):
        assert row in table, table
    # The goal rows carry a verdict, whatever the speed of this machine.
    goal_rows = [line for line in table.splitlines() if "< 1 s" in line]
    assert len(goal_rows) == 2, table
    assert all(line.split()[-1] in {"ok", "MISSED"} for line in goal_rows), table
