"""Engine: bad input changes nothing, internal errors poison it, its tables and clock are sound."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from lifekit._engine import (
    TRANSITIONS,
    ActionFinished,
    Effect,
    Engine,
    InServiceRequested,
    NodeStarted,
    OutOfServiceRequested,
    Output,
    ShutdownRequested,
    Step,
)
from lifekit._model import Action, Outcome, Policy, Resource, Result
from lifekit.errors import EngineFailed, EngineUsageError, LifekitError
from tests.strategies import Driver, runs

STACK = [Resource("db", "app"), Resource("web", "app", depends_on=["db"])]


def _busy_driver() -> Driver:
    """Probed, web requested in, db's restore in flight."""
    driver = Driver(STACK)
    driver.start()
    driver.send(InServiceRequested("web"), at=5.0)
    assert driver.pending_actions() == {("db", Action.RESTORE)}
    return driver


BAD_EVENTS: dict[str, Callable[[Driver], tuple[object, float]]] = {
    "unknown hierarchy": lambda d: (InServiceRequested("nope"), d.now),
    "not a root": lambda d: (OutOfServiceRequested("db"), d.now),
    "root not a string": lambda d: (InServiceRequested(["web"]), d.now),  # type: ignore[arg-type]
    "fenced not a bool": lambda d: (OutOfServiceRequested("web", fenced=1), d.now),  # type: ignore[arg-type]
    "unknown command id": lambda d: (ActionFinished(999, Result.ok()), d.now),
    "command id not an int": lambda d: (ActionFinished("1", Result.ok()), d.now),  # type: ignore[arg-type]
    "answered twice": lambda d: (ActionFinished(1, Result.ok()), d.now),
    "result not a Result": lambda d: (ActionFinished(max(d.pending), "ok"), d.now),  # type: ignore[arg-type]
    "started twice": lambda d: (NodeStarted(), d.now),
    "not an event": lambda d: (object(), d.now),
    "time went backwards": lambda d: (OutOfServiceRequested("web"), d.now - 0.001),
    "time is NaN": lambda d: (OutOfServiceRequested("web"), float("nan")),
    "time is infinite": lambda d: (OutOfServiceRequested("web"), float("inf")),
    "time is not a number": lambda d: (OutOfServiceRequested("web"), "5"),  # type: ignore[dict-item]
    "take_out not a bool": lambda d: (ShutdownRequested(take_out=None), d.now),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
def test_bad_input_raises_and_changes_nothing(case: str) -> None:
    driver, twin = _busy_driver(), _busy_driver()
    event, at = BAD_EVENTS[case](driver)
    before, due = driver.engine.snapshot(), driver.engine.next_deadline()
    with pytest.raises(EngineUsageError):
        driver.engine.handle(event, at)  # type: ignore[arg-type]
    assert driver.engine.snapshot() == before
    assert driver.engine.next_deadline() == due
    assert not driver.engine.failed
    # The engine goes on exactly as one that never saw the bad input.
    outputs = driver.engine.handle(ActionFinished(max(driver.pending), Result.ok()), 6.0)
    expected = twin.engine.handle(ActionFinished(max(twin.pending), Result.ok()), 6.0)
    assert outputs == expected
    assert driver.engine.snapshot() == twin.engine.snapshot()


def test_bad_times_for_the_timer_raise_and_change_nothing() -> None:
    driver = _busy_driver()
    before = driver.engine.snapshot()
    for now in (driver.now - 1.0, float("nan"), float("-inf"), True):
        with pytest.raises(EngineUsageError):
            driver.engine.handle_timer(now)
    assert driver.engine.snapshot() == before


def test_requests_and_probing_are_refused_during_shutdown() -> None:
    driver = _busy_driver()
    driver.send(ShutdownRequested(take_out=True))
    for event in (
        InServiceRequested("web"),
        OutOfServiceRequested("web"),
        ShutdownRequested(),
    ):
        before = driver.engine.snapshot()
        with pytest.raises(EngineUsageError, match="shut"):
            driver.engine.handle(event, driver.now)
        assert driver.engine.snapshot() == before


def test_usage_errors_name_the_bad_value_and_are_value_errors() -> None:
    engine = Engine(Driver(STACK).model)
    with pytest.raises(EngineUsageError, match=r"'nope'.*known: web") as info:
        engine.handle(InServiceRequested("nope"), 0.0)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LifekitError)
    engine.handle_timer(2.0)
    with pytest.raises(EngineUsageError, match=r"now=1\.0 but the engine was already at 2\.0"):
        engine.handle_timer(1.0)


class _ExplodingResult(Result):
    """A result whose text cannot be made: the engine breaks inside, not at validation."""

    def __str__(self) -> str:
        raise RuntimeError("boom")


def test_an_internal_error_poisons_the_engine() -> None:
    driver = _busy_driver()
    restore = driver.command("db", Action.RESTORE)
    with pytest.raises(EngineFailed, match="internal engine error") as info:
        driver.engine.handle(
            ActionFinished(restore.command_id, _ExplodingResult(Outcome.SOFT_FAILURE, "x")), 6.0
        )
    assert isinstance(info.value.__cause__, RuntimeError)
    assert isinstance(info.value, RuntimeError)
    assert driver.engine.failed
    # Every later call refuses, naming the original error; status can still be read.
    for call in (
        lambda: driver.engine.handle(OutOfServiceRequested("web"), 7.0),
        lambda: driver.engine.handle_timer(8.0),
        lambda: driver.engine.handle(NodeStarted(), 0.0),  # even input that is bad anyway
    ):
        with pytest.raises(EngineFailed) as later:
            call()
        assert isinstance(later.value.__cause__, RuntimeError)
    assert driver.engine.snapshot().resources["db"].tag == "db"


def test_the_transitions_table_is_total_and_every_effect_is_used() -> None:
    assert set(TRANSITIONS) == set(itertools.product(Step, Outcome))
    assert set(TRANSITIONS.values()) == set(Effect)
    # The essentials, spelt out.
    assert TRANSITIONS[(Step.PROBE, Outcome.OK)] is Effect.UP
    assert TRANSITIONS[(Step.CHECK, Outcome.SOFT_FAILURE)] is Effect.FAILED
    assert TRANSITIONS[(Step.CHECK, Outcome.HARD_FAILURE)] is Effect.ESCALATE
    assert TRANSITIONS[(Step.REMOVE, Outcome.NOT_RUNNING)] is Effect.DOWN
    assert all(
        TRANSITIONS[(Step.REMOVE, outcome)] is Effect.REMOVE_FAILED
        for outcome in (Outcome.SOFT_FAILURE, Outcome.HARD_FAILURE, Outcome.FATAL)
    )
    assert all(
        TRANSITIONS[(step, Outcome.FATAL)] is not Effect.FAILED for step in Step
    )  # fatal is never recovered locally


def test_quickchecks_of_one_kind_and_interval_fall_due_together() -> None:
    policy = Policy(quickcheck_interval=10.0)
    driver = Driver(
        [
            Resource("a1", "app", policy=policy),
            Resource("a2", "app", policy=policy),
            Resource("other", "ip", policy=policy),
        ]
    )
    driver.start()
    driver.send(InServiceRequested("a1"))
    driver.answer("a1")
    first = driver.engine.snapshot().resources["a1"].next_check_at
    assert first is not None
    assert 0.0 < first <= 10.0
    # a2 comes up later, but within the same interval: its check joins a1's.
    driver.send(InServiceRequested("a2"), at=first - 0.5)
    driver.answer("a2")
    assert driver.engine.snapshot().resources["a2"].next_check_at == first
    outputs = driver.tick(first)
    assert {(c.tag, c.action) for c in runs(outputs)} == {
        ("a1", Action.QUICKCHECK),
        ("a2", Action.QUICKCHECK),
    }


def test_quickchecks_stay_on_the_grid_when_answers_come_at_different_times() -> None:
    policy = Policy(quickcheck_interval=10.0)
    driver = Driver([Resource("a1", "app", policy=policy), Resource("a2", "app", policy=policy)])
    driver.start(Result.ok())
    first = driver.engine.snapshot().resources["a1"].next_check_at
    assert first == driver.engine.snapshot().resources["a2"].next_check_at
    assert first is not None
    driver.tick(first)
    driver.now = first + 0.2
    driver.answer("a1")
    driver.now = first + 3.7
    driver.answer("a2")
    checks = {tag: s.next_check_at for tag, s in driver.engine.snapshot().resources.items()}
    assert checks == {"a1": first + 10.0, "a2": first + 10.0}
    assert driver.engine.next_deadline() == first + 10.0


def test_the_engine_is_deterministic() -> None:
    def script() -> list[Output]:
        driver = Driver(
            [
                Resource("a", "app", policy=Policy(quickcheck_interval=1.0)),
                Resource("b", "ip", policy=Policy(quickcheck_interval=1.5)),
                Resource("c", "app", depends_on=["a", "b"]),
            ]
        )
        driver.start()
        driver.bring_in("c")
        for now in (1.0, 2.0, 3.0, 4.5):
            driver.tick(now)
            driver.settle(
                lambda command: (
                    Result.soft_failure("x")
                    if command.tag == "a" and command.action is Action.QUICKCHECK
                    else Result.ok()
                )
            )
        driver.send(ShutdownRequested())
        driver.settle()
        return driver.log

    assert script() == script()


def test_a_check_ending_exactly_on_the_grid_is_next_due_one_interval_later() -> None:
    # For kind "a" at 1 s, float rounding once put the next grid point at "now" itself.
    driver = Driver([Resource("a1", "a", policy=Policy(quickcheck_interval=1.0))])
    driver.start(Result.ok())
    first = driver.engine.snapshot().resources["a1"].next_check_at
    assert first is not None
    driver.tick(first)
    driver.now = first + 1.0  # exactly on the next grid point
    driver.answer("a1")
    due = driver.engine.snapshot().resources["a1"].next_check_at
    assert due is not None
    assert due > driver.now
    assert due == pytest.approx(first + 2.0)
