"""Engine: failed removes need fencing; actions past their timeout are cancelled and fail."""

from __future__ import annotations

from lifekit._engine import (
    ActionTimedOut,
    CancelAction,
    FencingRequired,
    HierarchyOutOfService,
    InServiceRequested,
    OutOfServiceRequested,
)
from lifekit._model import Action, Policy, Resource, Result, State, Timeouts
from tests.strategies import Driver, runs

STACK = [
    Resource("disk", "fs"),
    Resource("db", "app", depends_on=["disk"]),
    Resource("web", "app", depends_on=["db"]),
]


def _up(resources: list[Resource] = STACK) -> Driver:
    driver = Driver(resources)
    driver.start()
    driver.bring_in("web")
    return driver


def test_a_failed_remove_requires_fencing_and_keeps_everything_below() -> None:
    driver = _up()
    driver.log.clear()
    driver.send(OutOfServiceRequested("web"))
    driver.answer("web")
    outputs = driver.answer("db", Result.soft_failure("umount: target is busy"))
    fencing = [o for o in outputs if isinstance(o, FencingRequired)]
    assert len(fencing) == 1
    assert fencing[0].tag == "db"
    assert fencing[0].roots == ("web",)
    assert "umount: target is busy" in fencing[0].reason
    status = driver.engine.snapshot().resources["db"]
    assert status.state is State.ISU  # possibly still in service
    assert status.fencing_required
    assert "may still be in service" in status.reason
    # disk is under something that may still run: it is not removed, and nothing more is done.
    assert driver.pending == {}
    assert driver.state("disk") is State.ISP
    assert not driver.of(HierarchyOutOfService)
    driver.tick(10_000.0)
    driver.settle()
    assert driver.state("db") is State.ISU
    assert driver.state("disk") is State.ISP


def test_a_new_request_retries_the_remove() -> None:
    driver = _up()
    driver.log.clear()
    driver.send(OutOfServiceRequested("web"))
    driver.answer("web")
    driver.answer("db", Result.hard_failure("busy"))
    assert [(c.tag, c.action) for c in runs(driver.send(OutOfServiceRequested("web")))] == [
        ("db", Action.REMOVE)
    ]
    assert not driver.engine.snapshot().resources["db"].fencing_required
    driver.settle()
    assert set(driver.states().values()) == {State.OSU}
    assert driver.of(HierarchyOutOfService)


def test_a_request_in_removes_the_stuck_resource_before_restoring_it() -> None:
    driver = _up()
    driver.send(OutOfServiceRequested("web"))
    driver.answer("web")
    driver.answer("db", Result.fatal("cannot stop"))
    assert driver.pending_actions() == set()
    driver.send(InServiceRequested("web"))
    assert driver.pending_actions() == {("db", Action.REMOVE)}
    driver.answer("db")
    assert driver.pending_actions() == {("db", Action.RESTORE)}
    driver.settle()
    assert set(driver.states().values()) == {State.ISP}


def test_a_fenced_take_out_uses_the_fenced_remove() -> None:
    driver = _up()
    outputs = driver.send(OutOfServiceRequested("web", fenced=True))
    assert [(c.tag, c.fenced) for c in runs(outputs)] == [("web", True)]
    driver.answer("web")
    assert [c.fenced for c in driver.pending.values()] == [True]
    driver.settle()
    # A later request in service lifts it: the next take-out is a plain one again.
    driver.bring_in("web")
    assert [c.fenced for c in runs(driver.send(OutOfServiceRequested("web")))] == [False]


def test_an_action_past_its_timeout_is_cancelled_and_counts_as_a_failure() -> None:
    driver = Driver([Resource("db", "app", policy=Policy(timeouts=Timeouts(restore=30.0)))])
    driver.start()
    restore = runs(driver.send(InServiceRequested("db"), at=10.0))[0]
    assert restore.timeout == 30.0
    assert driver.engine.next_deadline() == 40.0
    assert driver.tick(39.9) == []
    outputs = driver.tick(40.0)
    assert outputs == [
        ActionTimedOut(at=40.0, tag="db", action=Action.RESTORE, timeout=30.0),
        CancelAction(restore.command_id, "restore timed out after 30 s"),
    ]
    # Still busy: no second action until the runtime reports the cancelled one.
    assert driver.engine.snapshot().resources["db"].action is Action.RESTORE
    assert driver.engine.next_deadline() is None
    assert driver.tick(1000.0) == []
    # Whatever it says now, it failed.
    driver.answer(restore, Result.ok())
    assert driver.state("db") is State.ISU
    assert "restore failed: soft_failure: restore timed out after 30 s" in driver.reason("db")
    assert driver.pending_actions() == {("db", Action.REMOVE)}


def test_a_hung_remove_needs_fencing() -> None:
    driver = _up([Resource("web", "app", policy=Policy(timeouts=Timeouts(remove=5.0)))])
    remove = runs(driver.send(OutOfServiceRequested("web"), at=1.0))[0]
    driver.tick(6.0)
    outputs = driver.answer(remove, Result.ok())
    assert [o.tag for o in outputs if isinstance(o, FencingRequired)] == ["web"]
    assert driver.engine.snapshot().resources["web"].fencing_required


def test_a_hung_quickcheck_is_a_failure_that_recover_may_fix() -> None:
    driver = _up([Resource("web", "app", policy=Policy(quickcheck_interval=2.0))])
    due = driver.engine.snapshot().resources["web"].next_check_at
    assert due is not None
    check = runs(driver.tick(due))[0]
    assert check.action is Action.QUICKCHECK
    assert not check.probe
    driver.tick(due + check.timeout)
    outputs = driver.answer(check, Result.ok())
    assert [(c.tag, c.action) for c in runs(outputs)] == [("web", Action.RECOVER)]
