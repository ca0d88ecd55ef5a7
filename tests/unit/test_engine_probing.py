"""Engine: probing at start learns each resource's real state and acts on what it finds."""

from __future__ import annotations

from lifekit._engine import (
    ActionTimedOut,
    CancelAction,
    HierarchyInService,
    HierarchyOutOfService,
    InServiceRequested,
    NodeStarted,
    ProbingCompleted,
    ResourceFailed,
)
from lifekit._model import Action, Resource, Result, State
from tests.strategies import Driver, runs

CHAIN = [Resource("db", "app"), Resource("web", "app", depends_on=["db"])]


def test_every_resource_is_probed_with_a_quickcheck_and_nothing_else() -> None:
    driver = Driver(CHAIN)
    outputs = driver.send(NodeStarted())
    assert {(c.tag, c.action, c.probe) for c in runs(outputs)} == {
        ("db", Action.QUICKCHECK, True),
        ("web", Action.QUICKCHECK, True),
    }
    assert set(driver.states().values()) == {State.UNKNOWN}


def test_requests_before_start_run_nothing_until_probed() -> None:
    driver = Driver(CHAIN)
    assert runs(driver.send(InServiceRequested("web"))) == []
    driver.start()
    assert driver.pending_actions() == {("db", Action.RESTORE)}


def test_found_running_is_adopted_and_not_restarted() -> None:
    driver = Driver(CHAIN)
    outputs = driver.start(Result.ok())
    assert driver.states() == {"db": State.ISP, "web": State.ISP}
    assert driver.reason("web") == "found running; adopted"
    assert [o.root for o in outputs if isinstance(o, HierarchyInService)] == ["web"]
    # Asking for what already runs restarts nothing, and nothing is ever removed.
    assert runs(driver.send(InServiceRequested("web"))) == []
    assert driver.pending == {}


def test_found_degraded_is_adopted_unprotected() -> None:
    driver = Driver(CHAIN)
    driver.start(lambda tag: Result.degraded("disk 95% full") if tag == "db" else Result.ok())
    assert driver.state("db") is State.ISU
    assert driver.reason("db") == "degraded: disk 95% full"
    assert driver.pending == {}


def test_found_not_running_is_osu_and_the_hierarchy_out_of_service() -> None:
    driver = Driver(CHAIN)
    outputs = driver.start()
    assert driver.states() == {"db": State.OSU, "web": State.OSU}
    assert driver.reason("db") == "not running"
    assert [o.root for o in outputs if isinstance(o, HierarchyOutOfService)] == ["web"]
    assert len([o for o in outputs if isinstance(o, ProbingCompleted)]) == 1
    assert isinstance(outputs[-1], ProbingCompleted | HierarchyOutOfService)


def test_probing_completed_comes_after_the_last_probe_only() -> None:
    driver = Driver(CHAIN)
    probes = runs(driver.send(NodeStarted()))
    first = driver.answer(probes[0], Result.not_running())
    assert not [o for o in first if isinstance(o, ProbingCompleted)]
    last = driver.answer(probes[1], Result.not_running())
    assert [o for o in last if isinstance(o, ProbingCompleted)] == [ProbingCompleted(at=0.0)]


def test_an_empty_model_completes_probing_at_once() -> None:
    driver = Driver([])
    assert driver.send(NodeStarted()) == [ProbingCompleted(at=0.0)]


def test_soft_failure_is_removed_then_restorable() -> None:
    driver = Driver(CHAIN)
    probes = {c.tag: c for c in runs(driver.send(NodeStarted()))}
    outputs = driver.answer(probes["db"], Result.soft_failure("pid file stale"))
    assert driver.state("db") is State.ISU
    assert "probe found it broken: soft_failure: pid file stale" in driver.reason("db")
    # Its parent is not probed yet and might run above it: the clean-up waits for it.
    assert runs(outputs) == []
    outputs = driver.answer(probes["web"], Result.not_running())
    assert [(c.tag, c.action) for c in runs(outputs)] == [("db", Action.REMOVE)]
    driver.answer("db")
    assert driver.state("db") is State.OSF
    assert "pid file stale" in driver.reason("db")
    # Nobody asked for it: it stays out. Asked for, it is restored (soft: may retry).
    assert driver.pending == {}
    driver.bring_in("web")
    assert driver.states() == {"db": State.ISP, "web": State.ISP}


def test_soft_failure_with_the_hierarchy_wanted_is_restored_after_clean_up() -> None:
    driver = Driver(CHAIN)
    driver.send(InServiceRequested("web"))
    driver.start(lambda tag: Result.soft_failure("half up") if tag == "db" else Result.ok())
    # web was found running above a broken db: it goes out first, then db is cleaned up.
    assert driver.pending_actions() == {("web", Action.REMOVE)}
    driver.answer("web")
    assert driver.pending_actions() == {("db", Action.REMOVE)}
    driver.settle()
    assert driver.states() == {"db": State.ISP, "web": State.ISP}


def test_hard_failure_is_removed_and_not_retried_without_a_new_request() -> None:
    driver = Driver(CHAIN)
    driver.send(InServiceRequested("web"))
    driver.start(lambda tag: Result.hard_failure("bad disk") if tag == "db" else Result.ok())
    driver.settle()
    assert driver.state("db") is State.OSF
    assert "hard_failure: bad disk" in driver.reason("db")
    assert driver.state("web") is State.OSU
    # An explicit request is the operator's retry.
    driver.bring_in("web")
    assert driver.states() == {"db": State.ISP, "web": State.ISP}


def test_fatal_is_osf_with_an_alert_and_never_touched() -> None:
    driver = Driver(CHAIN)
    driver.send(InServiceRequested("web"))
    outputs = driver.start(
        lambda tag: Result.fatal("no such binary") if tag == "db" else Result.not_running()
    )
    assert [o for o in outputs if isinstance(o, ResourceFailed)] == [
        ResourceFailed(at=0.0, tag="db", reason="no such binary", fatal=True)
    ]
    assert driver.state("db") is State.OSF
    assert driver.reason("db") == "configuration error: no such binary"
    assert driver.pending == {}
    driver.tick(1000.0)
    assert driver.pending == {}


def test_parent_found_running_above_a_stopped_child_is_taken_out() -> None:
    driver = Driver(CHAIN)
    driver.start(lambda tag: Result.ok() if tag == "web" else Result.not_running())
    # web runs without the db it needs: it cannot be adopted as in service.
    command = driver.command("web", Action.REMOVE)
    driver.answer(command)
    assert driver.state("web") is State.OSU
    assert "'db'" in driver.reason("web")
    assert driver.pending == {}
    driver.bring_in("web")
    assert driver.states() == {"db": State.ISP, "web": State.ISP}


def test_a_probe_past_its_timeout_counts_as_a_soft_failure() -> None:
    driver = Driver([Resource("db", "app")])
    probe = runs(driver.send(NodeStarted()))[0]
    outputs = driver.tick(probe.timeout)
    assert outputs == [
        ActionTimedOut(at=probe.timeout, tag="db", action=Action.QUICKCHECK, timeout=probe.timeout),
        CancelAction(probe.command_id, f"quickcheck timed out after {probe.timeout:g} s"),
    ]
    # Still busy until the runtime reports the cancelled probe; what it says no longer counts.
    assert driver.engine.snapshot().resources["db"].action is Action.QUICKCHECK
    outputs = driver.answer(probe, Result.ok())
    assert driver.state("db") is State.ISU
    assert "timed out" in driver.reason("db")
    assert [(c.tag, c.action) for c in runs(outputs)] == [("db", Action.REMOVE)]
