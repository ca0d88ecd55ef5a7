"""Engine: monitoring, local recovery, the temporal recovery limit, escalation and failover."""

from __future__ import annotations

from lifekit._engine import (
    HierarchyFailed,
    InServiceRequested,
    OutOfServiceRequested,
    QuickcheckFailed,
    RecoveryLimitReached,
    RecoveryStarted,
    ResourceFailed,
    ResourceRecovered,
)
from lifekit._model import Action, Policy, RecoveryLimit, Resource, Result, State
from tests.strategies import Driver, runs

INTERVAL = 5.0


def _policy(**changes: object) -> Policy:
    return Policy(quickcheck_interval=INTERVAL, **changes)  # type: ignore[arg-type]


def _stack(**db_policy: object) -> Driver:
    """db (under test) and ip, both under web; all in service and monitored."""
    driver = Driver(
        [
            Resource("db", "app", policy=_policy(**db_policy)),
            Resource("ip", "ip", policy=_policy()),
            Resource("web", "app", depends_on=["db", "ip"], policy=_policy()),
        ]
    )
    driver.start()
    driver.bring_in("web")
    assert set(driver.states().values()) == {State.ISP}
    return driver


def _check(driver: Driver, tag: str, result: Result) -> list[object]:
    """Move to the resource's next quickcheck, answer it, answer the other checks ok."""
    due = driver.engine.snapshot().resources[tag].next_check_at
    assert due is not None, f"{tag} has no quickcheck scheduled"
    driver.tick(due)
    for command in list(driver.pending.values()):
        if command.tag != tag and command.action is Action.QUICKCHECK:
            driver.answer(command)
    return list(driver.answer(tag, result, action=Action.QUICKCHECK))


def test_a_resource_in_service_is_quickchecked_every_interval() -> None:
    driver = _stack()
    first = driver.engine.snapshot().resources["db"].next_check_at
    assert first is not None
    assert 0.0 < first <= INTERVAL
    _check(driver, "db", Result.ok("fine"))
    status = driver.engine.snapshot().resources["db"]
    assert status.last_check == Result.ok("fine")
    assert status.last_check_at == first
    assert status.next_check_at == first + INTERVAL
    assert status.state is State.ISP


def test_a_failed_quickcheck_is_recovered_locally_and_back_in_service() -> None:
    driver = _stack()
    outputs = _check(driver, "db", Result.not_running("pid gone"))
    assert QuickcheckFailed(at=driver.now, tag="db", result=Result.not_running("pid gone")) in (
        outputs
    )
    assert (
        RecoveryStarted(
            at=driver.now, tag="db", attempt=1, reason="recovering: not_running: pid gone"
        )
        in outputs
    )
    assert [(c.tag, c.action) for c in runs(outputs)] == [("db", Action.RECOVER)]
    assert driver.state("db") is State.ISU
    assert driver.engine.snapshot().resources["db"].next_check_at is None  # busy recovering
    outputs = driver.answer("db")
    assert ResourceRecovered(at=driver.now, tag="db") in outputs
    assert driver.state("db") is State.ISP
    assert driver.state("web") is State.ISP  # nothing above it moved
    assert driver.engine.snapshot().resources["db"].recent_recoveries == 1
    assert driver.engine.snapshot().resources["db"].next_check_at is not None


def test_past_the_recovery_limit_the_hierarchy_fails_without_recover() -> None:
    driver = _stack(recovery_limit=RecoveryLimit(max_recoveries=1, window=100.0))
    _check(driver, "db", Result.soft_failure("crashed"))
    driver.answer("db")  # recovered
    outputs = _check(driver, "db", Result.soft_failure("crashed again"))
    assert RecoveryLimitReached(at=driver.now, tag="db", max_recoveries=1, window=100.0) in (
        outputs
    )
    assert ("db", Action.RECOVER) not in driver.pending_actions()
    failed = [o for o in outputs if isinstance(o, HierarchyFailed)]
    assert len(failed) == 1
    assert failed[0].root == "web"
    assert failed[0].cause == "db"
    assert failed[0].failover_needed
    assert "recovery limit reached (1 recovery within 100 s)" in failed[0].reason
    # Parents first: web goes out, then db and ip.
    assert driver.pending_actions() == {("web", Action.REMOVE)}
    driver.settle()
    snapshot = driver.engine.snapshot()
    assert snapshot.resources["db"].state is State.OSF
    assert "recovery limit reached" in snapshot.resources["db"].reason
    assert snapshot.resources["web"].reason == "taken out of service: db failed"
    assert snapshot.hierarchies["web"].state is State.OSF
    assert snapshot.hierarchies["web"].failed is not None
    assert "recovery limit" in snapshot.hierarchies["web"].failed
    assert snapshot.hierarchies["web"].reason == snapshot.hierarchies["web"].failed


def test_recoveries_outside_the_window_do_not_count() -> None:
    driver = _stack(recovery_limit=RecoveryLimit(max_recoveries=1, window=3.0))
    for _ in range(3):
        outputs = _check(driver, "db", Result.soft_failure("flaky"))
        assert [(c.tag, c.action) for c in runs(outputs)] == [("db", Action.RECOVER)]
        driver.answer("db")
    assert driver.state("db") is State.ISP


def test_a_hard_failure_escalates_at_once() -> None:
    driver = _stack()
    outputs = _check(driver, "db", Result.hard_failure("disk gone"))
    assert not [o for o in outputs if isinstance(o, RecoveryStarted)]
    assert [o.failover_needed for o in outputs if isinstance(o, HierarchyFailed)] == [True]
    assert (
        ResourceFailed(at=driver.now, tag="db", reason="quickcheck failed: hard_failure: disk gone")
        in outputs
    )
    driver.settle()
    assert driver.states() == {"db": State.OSF, "ip": State.OSU, "web": State.OSU}


def test_a_failed_recover_escalates() -> None:
    driver = _stack()
    _check(driver, "db", Result.soft_failure("crashed"))
    outputs = driver.answer("db", Result.soft_failure("will not start"))
    assert [o.cause for o in outputs if isinstance(o, HierarchyFailed)] == ["db"]
    driver.settle()
    assert driver.state("db") is State.OSF
    assert "recover failed: soft_failure: will not start" in driver.reason("db")


def test_without_local_recovery_a_failure_escalates() -> None:
    driver = _stack(local_recovery=False)
    outputs = _check(driver, "db", Result.not_running())
    assert ("db", Action.RECOVER) not in driver.pending_actions()
    assert [o.root for o in outputs if isinstance(o, HierarchyFailed)] == ["web"]
    assert "local recovery disabled" in driver.reason("db")


def test_fatal_asks_for_no_failover_and_is_never_retried() -> None:
    driver = _stack()
    outputs = _check(driver, "db", Result.fatal("config file unreadable"))
    assert (
        ResourceFailed(
            at=driver.now,
            tag="db",
            reason="quickcheck failed: fatal: config file unreadable",
            fatal=True,
        )
        in outputs
    )
    assert [o.failover_needed for o in outputs if isinstance(o, HierarchyFailed)] == [False]
    driver.settle()
    assert driver.state("db") is State.OSF
    # Time passes, other hierarchies come and go: nothing touches db again.
    for now in (100.0, 1000.0, 10_000.0):
        driver.tick(now)
        assert all(c.tag != "db" for c in driver.pending.values())
        driver.settle()
    assert driver.state("db") is State.OSF


def test_failover_off_takes_out_only_the_resource_and_its_dependants() -> None:
    driver = Driver(
        [
            Resource("db", "app", policy=_policy(failover=False, local_recovery=False)),
            Resource("ip", "ip", policy=_policy()),
            Resource("api", "app", depends_on=["db"], policy=_policy()),
            Resource("web", "app", depends_on=["api", "ip"], policy=_policy()),
        ]
    )
    driver.start()
    driver.bring_in("web")
    outputs = _check(driver, "db", Result.hard_failure("disk gone"))
    assert not [o for o in outputs if isinstance(o, HierarchyFailed)]
    assert [o.tag for o in outputs if isinstance(o, ResourceFailed)] == ["db"]
    driver.settle()
    assert driver.states() == {
        "db": State.OSF,
        "api": State.OSU,
        "web": State.OSU,
        "ip": State.ISP,  # not above db: stays
    }
    assert driver.reason("api") == "taken out of service: db failed"
    snapshot = driver.engine.snapshot()
    assert snapshot.hierarchies["web"].failed is None
    # db is not restarted behind the operator's back.
    driver.tick(driver.now + 100 * INTERVAL)
    driver.settle()
    assert driver.state("db") is State.OSF
    # A new request is the retry.
    driver.bring_in("web")
    assert set(driver.states().values()) == {State.ISP}


def test_a_degraded_quickcheck_is_isu_until_healthy_again() -> None:
    driver = _stack()
    _check(driver, "db", Result.degraded("replica lagging"))
    assert driver.state("db") is State.ISU
    assert driver.reason("db") == "degraded: replica lagging"
    assert driver.pending == {}
    _check(driver, "db", Result.ok())
    assert driver.state("db") is State.ISP
    assert driver.reason("db") == "quickcheck ok"


def test_a_quickcheck_failure_on_the_way_out_is_not_recovered() -> None:
    driver = _stack()
    due = driver.engine.snapshot().resources["db"].next_check_at
    assert due is not None
    driver.tick(due)
    driver.send(OutOfServiceRequested("web"))
    outputs = driver.answer("db", Result.soft_failure("crashed"), action=Action.QUICKCHECK)
    assert not [o for o in outputs if isinstance(o, RecoveryStarted | HierarchyFailed)]
    driver.settle()
    assert driver.state("db") is State.OSF
    assert driver.states()["web"] is State.OSU


def test_a_failure_shared_by_two_hierarchies_fails_both_wanted_ones() -> None:
    driver = Driver(
        [
            Resource("disk", "fs", policy=_policy(local_recovery=False)),
            Resource("a", "app", depends_on=["disk"], policy=_policy()),
            Resource("b", "app", depends_on=["disk"], policy=_policy()),
            Resource("c", "app", depends_on=["disk"], policy=_policy()),
        ]
    )
    driver.start()
    driver.bring_in("a")
    driver.bring_in("b")
    driver.send(OutOfServiceRequested("c"))  # c is not wanted here: no failover for it
    outputs = _check(driver, "disk", Result.soft_failure("io error"))
    assert sorted(o.root for o in outputs if isinstance(o, HierarchyFailed)) == ["a", "b"]
    driver.settle()
    assert set(driver.states().values()) == {State.OSU, State.OSF}


def test_a_new_request_clears_a_failed_hierarchy() -> None:
    driver = _stack(local_recovery=False)
    _check(driver, "db", Result.soft_failure("crashed"))
    driver.settle()
    assert driver.engine.snapshot().hierarchies["web"].failed is not None
    driver.send(InServiceRequested("web"))
    assert driver.engine.snapshot().hierarchies["web"].failed is None
    driver.settle()
    assert set(driver.states().values()) == {State.ISP}
