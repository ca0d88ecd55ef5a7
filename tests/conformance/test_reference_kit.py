"""The pytest form of the suite, used as a kit author would: the reference kit passes it.

``TestFlagKit`` subclasses :class:`lifekit.testing.KitConformance` and gets one test per rule
on asyncio and on trio. The second half runs pytest in a subprocess over a broken kit, to show
what an author sees when a rule fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from lifekit.testing import RULES, KitConformance
from tests.fixtures.broken_kits import START_DELAY, FlagKit
from tests.fixtures.pytest_subprocess import PYTEST_ARGS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


class TestFlagKit(KitConformance):
    kit_factory = FlagKit

    @pytest.fixture
    def params(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"path": str(tmp_path / "flag"), "start_delay": START_DELAY}

    @pytest.fixture
    def missing_params(self, tmp_path: Path) -> Mapping[str, Any]:
        return {"path": str(tmp_path / "not-installed" / "flag")}


BROKEN_TEST_MODULE = """
import pytest

from lifekit.testing import KitConformance
from broken_kits import RemoveNotIdempotentKit


class TestRemoveNotIdempotent(KitConformance):
    kit_factory = RemoveNotIdempotentKit
    rules = ["restore-twice", "remove-twice"]

    @pytest.fixture
    def params(self, tmp_path):
        return {"path": str(tmp_path / "flag")}
"""


def test_a_failing_rule_is_reported_with_its_id_and_title(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text(textwrap.dedent(BROKEN_TEST_MODULE))
    env = {**os.environ, "PYTHONPATH": str(FIXTURES)}
    finished = subprocess.run(
        [sys.executable, *PYTEST_ARGS, "-rf", "test_broken.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 1, output
    assert "2 failed, 2 passed" in output, output
    for backend in ("asyncio", "trio"):
        test_id = (
            f"test_broken.py::TestRemoveNotIdempotent::test_conformance[remove-twice-{backend}]"
        )
        assert f"FAILED {test_id}" in output, output
    expected = (
        "conformance rule 'remove-twice' (remove twice succeeds) failed: second remove "
        "(of a stopped resource) returned soft_failure: rm exited with status 1"
    )
    assert output.count(expected) >= 2, output


def test_rules_are_listed_in_a_stable_order() -> None:
    assert [rule.id for rule in RULES] == [
        "schema-valid",
        "results-typed",
        "restore-twice",
        "remove-twice",
        "quickcheck-after-remove",
        "quickcheck-program-missing",
        "restore-cancelled-cleanable",
        "timeouts-honoured",
    ]
