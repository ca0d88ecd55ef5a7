"""The benchmarks run in CI at a tiny smoke size: they must work, not be fast here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.timeout(300)
def test_core_benchmarks_run_at_smoke_size() -> None:
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_core.py"), "--size", "smoke"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    table = finished.stdout
    for row in (
        "resources in service (asyncio)",
        "resources in service (trio)",
        "every 1 s (asyncio)",
        "every 1 s (trio)",
        "import lifekit",
        "idle RSS of `lifekit up`",
    ):
        assert row in table, table
