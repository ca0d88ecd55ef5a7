"""First engine tests: probing, ordered bring-up and take-down, local recovery, escalation."""

from __future__ import annotations

from lifekit import (
    Policy,
    RecoveryLimit,
    Resource,
    Result,
    State,
    build_model,
)
from lifekit._engine import (
    ActionFinished,
    Engine,
    HierarchyFailed,
    InServiceRequested,
    NodeStarted,
    OutOfServiceRequested,
    RunAction,
)
from lifekit._model import Action


def _runs(outputs: list[object]) -> list[RunAction]:
    return [o for o in outputs if isinstance(o, RunAction)]


def _chain_model(policy: Policy | None = None) -> Engine:
    resources = [
        Resource("db", "app", policy=policy or Policy()),
        Resource("ip", "app"),
        Resource("web", "app", depends_on=["db", "ip"]),
    ]
    return Engine(build_model(resources, default_nodes=["n1"]))


def _probe_all(engine: Engine, result: Result, now: float = 0.0) -> None:
    for command in _runs(engine.handle(NodeStarted(), now)):
        engine.handle(ActionFinished(command.command_id, result), now)


def test_found_running_is_adopted_not_restarted() -> None:
    engine = _chain_model()
    _probe_all(engine, Result.ok())
    outputs = engine.handle(InServiceRequested("web"), 1.0)
    assert _runs(outputs) == []
    assert {s.state for s in engine.snapshot().resources.values()} == {State.ISP}


def test_children_before_parents_and_parents_before_children() -> None:
    engine = _chain_model()
    _probe_all(engine, Result.not_running())
    first = _runs(engine.handle(InServiceRequested("web"), 1.0))
    assert sorted(c.tag for c in first) == ["db", "ip"]
    assert all(c.action is Action.RESTORE for c in first)
    after_db = _runs(engine.handle(ActionFinished(first[0].command_id, Result.ok()), 2.0))
    assert after_db == []
    after_ip = _runs(engine.handle(ActionFinished(first[1].command_id, Result.ok()), 2.0))
    assert [(c.tag, c.action) for c in after_ip] == [("web", Action.RESTORE)]
    engine.handle(ActionFinished(after_ip[0].command_id, Result.ok()), 3.0)
    assert engine.snapshot().hierarchies["web"].state is State.ISP

    down = _runs(engine.handle(OutOfServiceRequested("web"), 4.0))
    assert [(c.tag, c.action) for c in down] == [("web", Action.REMOVE)]
    children = _runs(engine.handle(ActionFinished(down[0].command_id, Result.ok()), 5.0))
    assert sorted(c.tag for c in children) == ["db", "ip"]


def test_recovery_limit_escalates_without_recover() -> None:
    policy = Policy(quickcheck_interval=1.0, recovery_limit=RecoveryLimit(1, 100.0))
    engine = _chain_model(policy)
    _probe_all(engine, Result.ok())
    engine.handle(InServiceRequested("web"), 0.0)
    now = 0.0
    actions: list[Action] = []
    escalated: list[HierarchyFailed] = []
    for _ in range(6):
        deadline = engine.next_deadline()
        assert deadline is not None
        now = max(now, deadline)
        pending = _runs(engine.handle_timer(now))
        while pending:
            command = pending.pop(0)
            if command.tag != "db":
                result = Result.ok()
            elif command.action is Action.QUICKCHECK:
                result = Result.not_running("gone")
            else:
                result = Result.ok()
            actions.append(command.action) if command.tag == "db" else None
            outputs = engine.handle(ActionFinished(command.command_id, result), now)
            escalated += [o for o in outputs if isinstance(o, HierarchyFailed)]
            pending += _runs(outputs)
        if escalated:
            break
    assert actions.count(Action.RECOVER) == 1
    assert escalated
    assert escalated[0].failover_needed
    snapshot = engine.snapshot()
    assert snapshot.resources["db"].state is State.OSF
    assert "recovery limit" in snapshot.resources["db"].reason
    assert snapshot.hierarchies["web"].state is State.OSF
