"""ActionHeld / ActionStarted: time an action waits for a runtime slot is not its timeout."""

from __future__ import annotations

import pytest

from lifekit import Policy, Resource, Result, State, Timeouts, build_model
from lifekit._engine import (
    ActionFinished,
    ActionHeld,
    ActionStarted,
    ActionTimedOut,
    Engine,
    InServiceRequested,
    NodeStarted,
    RunAction,
)
from lifekit.errors import EngineUsageError


def _engine() -> tuple[Engine, RunAction]:
    policy = Policy(quickcheck_interval=100, timeouts=Timeouts(restore=5.0))
    engine = Engine(build_model([Resource("a", "k", policy=policy)], default_nodes=["n1"]))
    (probe,) = [o for o in engine.handle(NodeStarted(), 0.0) if isinstance(o, RunAction)]
    engine.handle(ActionFinished(probe.command_id, Result.not_running()), 0.0)
    (restore,) = [
        o for o in engine.handle(InServiceRequested("a"), 0.0) if isinstance(o, RunAction)
    ]
    return engine, restore


def test_a_held_action_does_not_time_out_while_held() -> None:
    engine, restore = _engine()
    assert engine.next_deadline() == 5.0
    engine.handle(ActionHeld(restore.command_id), 0.0)
    assert engine.next_deadline() is None or engine.next_deadline() > 1000
    assert not [o for o in engine.handle_timer(50.0) if isinstance(o, ActionTimedOut)]
    engine.handle(ActionStarted(restore.command_id), 60.0)
    assert engine.next_deadline() == 65.0
    assert not [o for o in engine.handle_timer(64.9) if isinstance(o, ActionTimedOut)]
    engine.handle(ActionFinished(restore.command_id, Result.ok()), 64.9)
    assert engine.snapshot().resources["a"].state is State.ISP


def test_a_started_action_still_times_out_from_its_start() -> None:
    engine, restore = _engine()
    engine.handle(ActionHeld(restore.command_id), 0.0)
    engine.handle(ActionStarted(restore.command_id), 10.0)
    outputs = engine.handle_timer(15.0)
    assert [o.tag for o in outputs if isinstance(o, ActionTimedOut)] == ["a"]


@pytest.mark.parametrize("event", [ActionHeld(99), ActionStarted(99), ActionStarted(True)])
def test_unknown_ids_are_refused_without_change(event: object) -> None:
    engine, _ = _engine()
    before = engine.snapshot()
    with pytest.raises(EngineUsageError, match="no action with command id"):
        engine.handle(event, 1.0)  # type: ignore[arg-type]
    assert engine.snapshot() == before


def test_started_only_follows_held() -> None:
    engine, restore = _engine()
    before = engine.snapshot()
    with pytest.raises(EngineUsageError, match="only follows ActionHeld"):
        engine.handle(ActionStarted(restore.command_id), 1.0)
    assert engine.next_deadline() == 5.0
    engine.handle(ActionHeld(restore.command_id), 1.0)
    with pytest.raises(EngineUsageError, match="already held"):
        engine.handle(ActionHeld(restore.command_id), 1.0)
    engine.handle(ActionStarted(restore.command_id), 2.0)
    with pytest.raises(EngineUsageError, match="only follows ActionHeld"):
        engine.handle(ActionStarted(restore.command_id), 3.0)
    assert engine.next_deadline() == 7.0
    assert engine.snapshot().resources == before.resources
