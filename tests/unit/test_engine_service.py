"""Engine: bringing hierarchies in service and taking them out, in order, and failed restores."""

from __future__ import annotations

from lifekit._engine import (
    HierarchyFailed,
    HierarchyInService,
    HierarchyOutOfService,
    InServiceRequested,
    OutOfServiceRequested,
    ResourceFailed,
    RunAction,
)
from lifekit._model import Action, Policy, Resource, Result, State
from tests.strategies import Driver, build, runs

#    app
#     |
#    web
#   /   \
#  db    ip      (db and ip are independent branches)
#  |
#  fs
DIAMOND = [
    Resource("fs", "fs"),
    Resource("db", "app", depends_on=["fs"]),
    Resource("ip", "ip"),
    Resource("web", "app", depends_on=["db", "ip"]),
    Resource("app", "app", depends_on=["web"]),
]


def _tags(commands: list[RunAction]) -> set[str]:
    return {c.tag for c in commands}


def test_children_come_up_before_parents_and_branches_concurrently() -> None:
    driver = Driver(DIAMOND)
    driver.start()
    first = runs(driver.send(InServiceRequested("app")))
    # Both leaves at once: the branches are independent.
    assert _tags(first) == {"fs", "ip"}
    assert {c.action for c in first} == {Action.RESTORE}
    assert runs(driver.answer("ip")) == []  # web still needs db
    assert _tags(runs(driver.answer("fs"))) == {"db"}
    assert _tags(runs(driver.answer("db"))) == {"web"}
    assert _tags(runs(driver.answer("web"))) == {"app"}
    outputs = driver.answer("app")
    assert HierarchyInService(at=0.0, root="app") in outputs
    assert set(driver.states().values()) == {State.ISP}
    assert driver.engine.snapshot().hierarchies["app"].state is State.ISP


def test_parents_go_out_before_children_in_reverse_order() -> None:
    driver = Driver(DIAMOND)
    driver.start()
    driver.bring_in("app")
    assert _tags(runs(driver.send(OutOfServiceRequested("app")))) == {"app"}
    assert _tags(runs(driver.answer("app"))) == {"web"}
    # Both branches go out at once once their only parent is out.
    assert _tags(runs(driver.answer("web"))) == {"db", "ip"}
    assert runs(driver.answer("ip")) == []
    assert _tags(runs(driver.answer("db"))) == {"fs"}
    outputs = driver.answer("fs")
    assert HierarchyOutOfService(at=0.0, root="app") in outputs
    assert set(driver.states().values()) == {State.OSU}
    assert driver.reason("db") == "taken out of service on request"


def test_a_shared_child_stays_while_another_hierarchy_needs_it() -> None:
    driver = Driver(
        [
            Resource("disk", "fs"),
            Resource("a", "app", depends_on=["disk"]),
            Resource("b", "app", depends_on=["disk"]),
        ]
    )
    driver.start()
    driver.bring_in("a")
    driver.bring_in("b")
    driver.take_out("a")
    assert driver.states() == {"disk": State.ISP, "a": State.OSU, "b": State.ISP}
    driver.take_out("b")
    assert set(driver.states().values()) == {State.OSU}


def test_a_request_in_during_take_out_waits_for_the_removes_to_end() -> None:
    driver = Driver([Resource("db", "app"), Resource("web", "app", depends_on=["db"])])
    driver.start()
    driver.bring_in("web")
    driver.send(OutOfServiceRequested("web"))
    driver.answer("web")
    assert driver.pending_actions() == {("db", Action.REMOVE)}
    # Changed our mind while db is being removed: web must not start above a db going away.
    assert runs(driver.send(InServiceRequested("web"))) == []
    assert [(c.tag, c.action) for c in runs(driver.answer("db"))] == [("db", Action.RESTORE)]
    driver.settle()
    assert driver.states() == {"db": State.ISP, "web": State.ISP}


def test_a_degraded_restore_is_isu_with_its_reason() -> None:
    driver = Driver([Resource("db", "app")])
    driver.start()
    driver.send(InServiceRequested("db"))
    driver.answer("db", Result.degraded("replica missing"))
    assert driver.state("db") is State.ISU
    assert driver.reason("db") == "degraded: replica missing"


def _failing_restore_setup(*, rollback: bool) -> Driver:
    """old runs already; new and slow are brought up by the attempt; bad fails to restore."""
    model = build(
        Resource("old", "app"),
        Resource("new", "app"),
        Resource("slow", "app"),
        Resource("bad", "app"),
        Resource("top", "app", depends_on=["old", "new", "slow", "bad"]),
        rollback=rollback,
    )
    driver = Driver(model)
    driver.start(lambda tag: Result.ok() if tag == "old" else Result.not_running())
    assert _tags(runs(driver.send(InServiceRequested("top")))) == {"new", "slow", "bad"}
    driver.answer("new")
    return driver


def test_a_failed_restore_rolls_back_what_the_attempt_brought_up() -> None:
    driver = _failing_restore_setup(rollback=True)
    outputs = driver.answer("bad", Result.soft_failure("port in use"))
    assert [o for o in outputs if isinstance(o, HierarchyFailed)] == [
        HierarchyFailed(
            at=0.0,
            root="top",
            cause="bad",
            reason="restore failed: soft_failure: port in use",
            failover_needed=True,
        )
    ]
    assert [o.tag for o in outputs if isinstance(o, ResourceFailed)] == ["bad"]
    # bad may be half up: it is cleaned up; new came up in this attempt: it goes out again.
    assert driver.pending_actions() == {
        ("bad", Action.REMOVE),
        ("new", Action.REMOVE),
        ("slow", Action.RESTORE),
    }
    # slow was still coming up: once it is up it goes out again too.
    assert [(c.tag, c.action) for c in runs(driver.answer("slow"))] == [("slow", Action.REMOVE)]
    driver.settle()
    assert driver.states() == {
        "old": State.ISP,  # was running before the attempt: stays
        "new": State.OSU,
        "slow": State.OSU,
        "bad": State.OSF,
        "top": State.OSU,
    }
    assert driver.reason("bad") == "restore failed: soft_failure: port in use"
    assert driver.reason("new") == "taken out of service: bad failed"
    hierarchy = driver.engine.snapshot().hierarchies["top"]
    assert hierarchy.state is State.OSF
    assert hierarchy.failed == "bad: restore failed: soft_failure: port in use"


def test_without_rollback_what_came_up_stays() -> None:
    driver = _failing_restore_setup(rollback=False)
    driver.answer("bad", Result.soft_failure("port in use"))
    assert driver.pending_actions() == {("bad", Action.REMOVE), ("slow", Action.RESTORE)}
    assert runs(driver.answer("slow")) == []
    driver.settle()
    assert driver.states() == {
        "old": State.ISP,
        "new": State.ISP,
        "slow": State.ISP,
        "bad": State.OSF,
        "top": State.OSU,
    }


def test_a_failed_restore_is_not_retried_until_a_new_request() -> None:
    driver = _failing_restore_setup(rollback=False)
    driver.answer("bad", Result.soft_failure("port in use"))
    driver.settle()
    driver.tick(10_000.0)
    driver.settle()
    assert driver.state("bad") is State.OSF
    driver.bring_in("top")
    assert set(driver.states().values()) == {State.ISP}
    assert driver.engine.snapshot().hierarchies["top"].failed is None


def test_a_kept_resource_failing_to_restore_is_not_restored_again_and_again() -> None:
    driver = _failing_restore_setup(rollback=False)
    driver.answer("bad", Result.soft_failure("port in use"))
    # slow was being restored when the attempt failed, and is kept: then it fails too.
    driver.answer("slow", Result.soft_failure("no luck either"))
    restores = 0
    for _ in range(20):
        if not driver.pending:
            break
        command = next(iter(driver.pending.values()))
        restores += command.action is Action.RESTORE
        failing = command.action is Action.RESTORE
        driver.answer(command, Result.soft_failure("still no luck") if failing else Result.ok())
    assert driver.pending == {}
    assert restores == 0
    assert driver.state("slow") is State.OSF


def test_a_fatal_restore_asks_for_no_failover() -> None:
    driver = Driver([Resource("db", "app")])
    driver.start()
    driver.send(InServiceRequested("db"))
    outputs = driver.answer("db", Result.fatal("bad config"))
    assert ResourceFailed(
        at=0.0, tag="db", reason="restore failed: fatal: bad config", fatal=True
    ) in (outputs)
    failed = [o for o in outputs if isinstance(o, HierarchyFailed)]
    assert [f.failover_needed for f in failed] == [False]


def test_a_restore_failure_of_a_resource_without_failover_asks_for_none() -> None:
    driver = Driver([Resource("db", "app", policy=Policy(failover=False))])
    driver.start()
    driver.send(InServiceRequested("db"))
    outputs = driver.answer("db", Result.hard_failure("no"))
    failed = [o for o in outputs if isinstance(o, HierarchyFailed)]
    assert [f.failover_needed for f in failed] == [False]


def test_a_parent_being_restored_keeps_its_children_until_it_is_done() -> None:
    driver = Driver(
        [
            Resource("db", "app", policy=Policy(quickcheck_interval=1.0)),
            Resource("web", "app", depends_on=["db"]),
        ]
    )
    driver.start()
    driver.send(InServiceRequested("web"))
    driver.answer("db")
    assert driver.pending_actions() == {("web", Action.RESTORE)}
    # db's quickcheck finds it dead for good while web is still starting above it.
    db_check = driver.engine.snapshot().resources["db"].next_check_at
    assert db_check is not None
    driver.tick(db_check)
    driver.answer("db", Result.hard_failure("disk gone"))
    # db must not go out under a web that is still coming up.
    assert driver.pending_actions() == {("web", Action.RESTORE)}
    assert [(c.tag, c.action) for c in runs(driver.answer("web"))] == [("web", Action.REMOVE)]
    assert [(c.tag, c.action) for c in runs(driver.answer("web"))] == [("db", Action.REMOVE)]
    driver.settle()
    assert driver.states() == {"db": State.OSF, "web": State.OSU}
