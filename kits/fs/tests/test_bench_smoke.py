"""The fs benchmark runs at smoke size and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

BENCH = Path(__file__).parents[3] / "benchmarks" / "bench_fs.py"


def test_the_benchmark_runs_at_smoke_size() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--size", "smoke"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for row in ("restore (fsck auto: e2fsck -p)", "remove", "quickcheck, depth write"):
        assert row in done.stdout, done.stdout
