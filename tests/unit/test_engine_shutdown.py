"""Engine: shutdown takes everything out, or leaves it running, and then says it is done."""

from __future__ import annotations

import pytest

from lifekit._engine import (
    CancelAction,
    InServiceRequested,
    NodeStarted,
    RunAction,
    ShutdownCompleted,
    ShutdownRequested,
)
from lifekit._model import Action, Policy, Resource, Result, State
from lifekit.errors import EngineUsageError
from tests.strategies import Driver, runs

FAST = Policy(quickcheck_interval=1.0)
RESOURCES = [
    Resource("db", "app", policy=FAST),
    Resource("web", "app", depends_on=["db"], policy=FAST),
    Resource("other", "app", policy=FAST),
]


def _running() -> Driver:
    """web's stack in service with db's quickcheck in flight; other's restore in flight."""
    driver = Driver(RESOURCES)
    driver.start()
    driver.bring_in("web")
    driver.send(InServiceRequested("other"))
    due = driver.engine.snapshot().resources["db"].next_check_at
    assert due is not None
    driver.tick(due)
    for command in list(driver.pending.values()):
        if command.tag == "web":
            driver.answer(command)
    assert driver.pending_actions() == {("db", Action.QUICKCHECK), ("other", Action.RESTORE)}
    driver.log.clear()
    return driver


def test_shutdown_takes_everything_out_parents_first() -> None:
    driver = _running()
    check = driver.command("db", Action.QUICKCHECK)
    outputs = driver.send(ShutdownRequested(take_out=True))
    assert CancelAction(check.command_id, "node shutting down") in outputs
    assert {(c.tag, c.action) for c in runs(outputs)} == {("web", Action.REMOVE)}
    # The cancelled check's answer is ignored, whatever it says.
    assert runs(driver.answer(check, Result.hard_failure("gone"))) == []
    assert driver.pending_actions() == {("web", Action.REMOVE), ("other", Action.RESTORE)}
    assert [(c.tag, c.action) for c in runs(driver.answer("web"))] == [("db", Action.REMOVE)]
    # A restore in flight finishes, then what it brought up goes out.
    assert [(c.tag, c.action) for c in runs(driver.answer("other"))] == [("other", Action.REMOVE)]
    driver.answer("db")
    assert not driver.of(ShutdownCompleted)
    outputs = driver.answer("other")
    assert outputs[-1] == ShutdownCompleted(at=driver.now)
    assert set(driver.states().values()) == {State.OSU}
    assert driver.reason("web") == "taken out of service: node shutting down"
    assert driver.engine.shutdown_completed
    # Nothing more: no quickchecks, no deadlines.
    assert driver.engine.next_deadline() is None
    assert driver.tick(driver.now + 100.0) == []
    assert len(driver.of(ShutdownCompleted)) == 1
    assert not [c for c in driver.of(RunAction) if c.action is Action.QUICKCHECK]


def test_shutdown_leaving_everything_running_starts_nothing() -> None:
    driver = _running()
    check = driver.command("db", Action.QUICKCHECK)
    outputs = driver.send(ShutdownRequested(take_out=False))
    assert runs(outputs) == []
    assert CancelAction(check.command_id, "node shutting down") in outputs
    assert runs(driver.answer(check)) == []
    outputs = driver.answer("other")  # the restore in flight finishes: it is in service
    assert outputs[-1] == ShutdownCompleted(at=driver.now)
    assert driver.states() == {"db": State.ISP, "web": State.ISP, "other": State.ISP}
    assert driver.engine.snapshot().shutting_down
    assert driver.tick(driver.now + 100.0) == []


def test_shutdown_with_nothing_in_flight_completes_at_once() -> None:
    driver = Driver(RESOURCES)
    driver.start()
    assert driver.send(ShutdownRequested()) == [ShutdownCompleted(at=0.0)]


def test_shutdown_before_start_completes_and_refuses_to_start() -> None:
    driver = Driver(RESOURCES)
    assert driver.send(ShutdownRequested()) == [ShutdownCompleted(at=0.0)]
    with pytest.raises(EngineUsageError, match="shutting down"):
        driver.engine.handle(NodeStarted(), 0.0)
    assert set(driver.states().values()) == {State.UNKNOWN}


def test_a_take_out_shutdown_lets_probes_finish_to_remove_what_they_find() -> None:
    driver = Driver(RESOURCES)
    probes = runs(driver.send(NodeStarted()))
    outputs = driver.send(ShutdownRequested(take_out=True))
    assert not [o for o in outputs if isinstance(o, CancelAction)]
    for probe in probes:
        driver.answer(probe, Result.ok())
    assert driver.pending_actions() == {("web", Action.REMOVE), ("other", Action.REMOVE)}
    driver.settle()
    assert set(driver.states().values()) == {State.OSU}
    assert len(driver.of(ShutdownCompleted)) == 1


def test_a_leave_running_shutdown_cancels_probes() -> None:
    driver = Driver(RESOURCES)
    probes = runs(driver.send(NodeStarted()))
    outputs = driver.send(ShutdownRequested(take_out=False))
    assert sorted(o.command_id for o in outputs if isinstance(o, CancelAction)) == sorted(
        p.command_id for p in probes
    )
    driver.settle()
    assert driver.pending == {}
    assert len(driver.of(ShutdownCompleted)) == 1


def test_a_stuck_remove_does_not_block_shutdown() -> None:
    driver = Driver(RESOURCES)
    driver.start()
    driver.bring_in("web")
    driver.send(ShutdownRequested())
    outputs = driver.answer("web", Result.soft_failure("busy"))
    assert outputs[-1] == ShutdownCompleted(at=driver.now)
    assert driver.engine.snapshot().resources["web"].fencing_required
    assert driver.state("db") is State.ISP  # never removed from under what may still run


def test_a_timed_out_check_during_a_leave_running_shutdown_is_not_recovered() -> None:
    driver = Driver([Resource("db", "app", policy=FAST)])
    driver.start(Result.ok())
    due = driver.engine.snapshot().resources["db"].next_check_at
    assert due is not None
    check = runs(driver.tick(due))[0]
    driver.tick(due + check.timeout)  # timed out: its result will count as a failure
    outputs = driver.send(ShutdownRequested(take_out=False))
    assert not [o for o in outputs if isinstance(o, CancelAction)]  # cancelled already
    outputs = driver.answer(check)
    assert runs(outputs) == []
    assert outputs[-1] == ShutdownCompleted(at=driver.now)
    assert driver.state("db") is State.ISU
    assert "not recovering" in driver.reason("db")
