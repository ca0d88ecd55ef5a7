"""The ip kit's benchmark runs at smoke size, prints every row and leaves no lab behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_ip.py"


def test_ip_benchmark_runs_at_smoke_size() -> None:
    finished = subprocess.run(
        [sys.executable, str(BENCHMARK), "--size", "smoke"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    # The benchmark checks its own leftovers and exits 1 on any.
    assert finished.returncode == 0, finished.stdout + finished.stderr
    table = finished.stdout
    for row in (
        "restore: 10.88.1.50/24 dad=wait",
        "restore: 10.88.1.50/24 dad=skip",
        "restore: fd6c:6b00:88:1::50/64 dad=wait",
        "remove: fd6c:6b00:88:1::50/64 dad=skip",
        "quickcheck: fd6c:6b00:88:1::50/64 dad=skip",
        "quickcheck_many: 10 addresses, one cycle",
        "peer: 10 addresses checked one by one",
        "peer: iputils arping -U -c 1",
        "no leftovers: the lab is gone",
    ):
        assert row in table, table
