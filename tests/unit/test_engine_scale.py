"""Engine: deep and wide hierarchies go in and out of service, in linear work, without recursion.

The linearity check counts the lines the engine executes (a trace function), not time: the
count is the same on a loaded CI machine as on an idle one.
"""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

import lifekit._engine._engine as engine_module
from lifekit._engine import (
    ActionFinished,
    Engine,
    InServiceRequested,
    NodeStarted,
    OutOfServiceRequested,
    RunAction,
)
from lifekit._model import Action, Model, Resource, Result, State, build_model


def chain(length: int) -> Model:
    """c0 <- c1 <- ... <- c<length-1>: each depends on the one before."""
    return build_model(
        [Resource(f"c{i}", "app", depends_on=[f"c{i - 1}"] if i else []) for i in range(length)],
        default_nodes=["n1"],
    )


def wide(size: int) -> Model:
    """One root over ``size - 1`` leaves."""
    leaves = [Resource(f"l{i}", "app") for i in range(size - 1)]
    root = Resource("root", "app", depends_on=[leaf.tag for leaf in leaves])
    return build_model([*leaves, root], default_nodes=["n1"])


def cycle_in_and_out(model: Model) -> tuple[Engine, list[tuple[str, Action]]]:
    """Probe (not running), bring the one hierarchy in, then out; answer ok, oldest first."""
    engine = Engine(model)
    (root,) = model.hierarchies
    done: list[tuple[str, Action]] = []
    for event in (NodeStarted(), InServiceRequested(root), OutOfServiceRequested(root)):
        # Answer in the order commands were issued: the order that makes a scan of "are all
        # my children up yet?" quadratic, if the engine ever did one.
        pending = deque(o for o in engine.handle(event, 1.0) if isinstance(o, RunAction))
        while pending:
            command = pending.popleft()
            done.append((command.tag, command.action))
            result = Result.not_running() if command.probe else Result.ok()
            outputs = engine.handle(ActionFinished(command.command_id, result), 1.0)
            pending.extend(o for o in outputs if isinstance(o, RunAction))
    return engine, done


def test_a_1000_long_chain_goes_in_and_out_in_order() -> None:
    limit = sys.getrecursionlimit()
    engine, done = cycle_in_and_out(chain(1000))
    assert sys.getrecursionlimit() == limit
    restores = [tag for tag, action in done if action is Action.RESTORE]
    removes = [tag for tag, action in done if action is Action.REMOVE]
    assert restores == [f"c{i}" for i in range(1000)]
    assert removes == [f"c{i}" for i in reversed(range(1000))]
    assert {s.state for s in engine.snapshot().resources.values()} == {State.OSU}


def test_a_10000_wide_hierarchy_goes_in_and_out() -> None:
    engine, done = cycle_in_and_out(wide(10_000))
    restores = [tag for tag, action in done if action is Action.RESTORE]
    removes = [tag for tag, action in done if action is Action.REMOVE]
    assert len(restores) == len(removes) == 10_000
    assert restores[-1] == "root"
    assert removes[0] == "root"
    assert {s.state for s in engine.snapshot().resources.values()} == {State.OSU}


def _lines_executed(model: Model) -> int:
    """How many lines of the engine module one in-and-out cycle executes."""
    source = str(Path(engine_module.__file__).resolve())
    count = 0

    def local(frame: FrameType, event: str, _arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_(frame: FrameType, event: str, _arg: Any) -> Any:
        # Trace inside the engine module only: the rest (attrs, heapq wrappers) is not its
        # work, and tracing it would only make the test slower.
        return local if frame.f_code.co_filename == source else None

    previous = sys.gettrace()  # coverage's tracer, when it runs: put it back afterwards
    sys.settrace(global_)
    try:
        cycle_in_and_out(model)
    finally:
        sys.settrace(previous)
    return count


def test_work_grows_linearly_with_the_hierarchy() -> None:
    for build in (wide, chain):
        small, large = _lines_executed(build(500)), _lines_executed(build(2000))
        # Linear work gives a ratio near 4 (4x the resources); quadratic, near 16.
        assert large / small < 6, (build.__name__, small, large)
