"""docs/engine.md states the engine's transitions table exactly as the code has it."""

from __future__ import annotations

from pathlib import Path

from lifekit._engine import TRANSITIONS, Effect, Step
from lifekit._model import Outcome

DOC = Path(__file__).resolve().parents[2] / "docs" / "engine.md"


def documented_transitions() -> dict[tuple[Step, Outcome], Effect]:
    """The ``Step \\ Outcome`` table of docs/engine.md, parsed."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Step \\ Outcome"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")][1:]
    outcomes = [Outcome(name) for name in header]
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        step, *effects = (cell.strip() for cell in line.strip("|").split("|"))
        for outcome, effect in zip(outcomes, effects, strict=True):
            table[(Step(step), outcome)] = Effect(effect)
    return table


def test_the_documented_table_is_the_engine_table() -> None:
    assert documented_transitions() == dict(TRANSITIONS)
