"""Shared test support for lifekit's engine tests: hypothesis strategies and an engine driver.

Models are random DAGs: resource ``r<i>`` may depend on any ``r<j>`` with ``j < i``, so children
are shared between parents and between hierarchies (several roots), and cycles cannot occur.
Policies use small timeouts, intervals and recovery limits so that a short run of a state
machine reaches timeouts, quickchecks and escalations.

:class:`Driver` plays the runtime for unit tests: it feeds events to an engine at a time the test
controls, remembers which commands are waiting for a result, and answers them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from hypothesis import strategies as st

from lifekit._engine import (
    ActionFinished,
    Engine,
    InServiceRequested,
    NodeStarted,
    OutOfServiceRequested,
    Output,
    RunAction,
)
from lifekit._model import (
    Action,
    HierarchySpec,
    Model,
    Outcome,
    Policy,
    RecoveryLimit,
    Resource,
    Result,
    State,
    Timeouts,
    build_model,
)

__all__ = [
    "NODES",
    "Driver",
    "build",
    "models",
    "outcomes",
    "policies",
    "resource_lists",
    "results",
    "runs",
]

#: The one node every generated hierarchy may run on.
NODES = ("n1",)

# OK first and most often: it is what hypothesis shrinks towards, and a run where everything
# fails reaches little of the engine.
_WEIGHTED_OUTCOMES = [
    Outcome.OK,
    Outcome.OK,
    Outcome.OK,
    Outcome.NOT_RUNNING,
    Outcome.DEGRADED,
    Outcome.SOFT_FAILURE,
    Outcome.HARD_FAILURE,
    Outcome.FATAL,
]


# What probing finds most often is a stopped node: that leaves work for the requests.
_WEIGHTED_PROBES = [
    Outcome.NOT_RUNNING,
    Outcome.NOT_RUNNING,
    Outcome.NOT_RUNNING,
    Outcome.OK,
    Outcome.DEGRADED,
    Outcome.SOFT_FAILURE,
    Outcome.HARD_FAILURE,
    Outcome.FATAL,
]


def outcomes(*, probe: bool = False) -> st.SearchStrategy[Outcome]:
    """Any outcome: OK most often, or for a probe, NOT_RUNNING most often."""
    return st.sampled_from(_WEIGHTED_PROBES if probe else _WEIGHTED_OUTCOMES)


def results(*, probe: bool = False) -> st.SearchStrategy[Result]:
    """Any kit result, with or without a reason (weighted as :func:`outcomes`)."""
    return st.builds(Result, outcomes(probe=probe), st.sampled_from(["", "why not"]))


def policies() -> st.SearchStrategy[Policy]:
    """Small, fast policies: local recovery on/off, tiny limits, failover on/off."""
    return st.builds(
        Policy,
        quickcheck_interval=st.sampled_from([1.0, 2.5, 5.0]),
        timeouts=st.builds(
            Timeouts,
            restore=st.sampled_from([2.0, 10.0]),
            remove=st.sampled_from([2.0, 10.0]),
            quickcheck=st.sampled_from([1.0, 3.0]),
            recover=st.sampled_from([2.0, 10.0]),
        ),
        local_recovery=st.booleans(),
        recovery_limit=st.builds(RecoveryLimit, st.integers(0, 2), st.sampled_from([5.0, 30.0])),
        failover=st.booleans(),
    )


@st.composite
def resource_lists(
    draw: st.DrawFn, *, max_resources: int = 8, max_children: int = 3
) -> list[Resource]:
    """Resources forming a random DAG (shared children, several roots), in a random order."""
    count = draw(st.integers(1, max_resources))
    resources = []
    for index in range(count):
        children = (
            draw(st.lists(st.integers(0, index - 1), unique=True, max_size=max_children))
            if index
            else []
        )
        resources.append(
            Resource(
                f"r{index}",
                draw(st.sampled_from(["a", "b"])),
                depends_on=[f"r{child}" for child in children],
                policy=draw(policies()),
            )
        )
    return draw(st.permutations(resources))


@st.composite
def models(draw: st.DrawFn, *, max_resources: int = 8) -> Model:
    """A valid model over :func:`resource_lists`, each hierarchy with rollback on or off."""
    resources = draw(resource_lists(max_resources=max_resources))
    roots = build_model(resources, default_nodes=NODES).hierarchies
    specs = {root: HierarchySpec(nodes=NODES, rollback=draw(st.booleans())) for root in roots}
    return build_model(resources, specs)


# ---------------------------------------------------------------------------------------------
# Driving an engine by hand

T = TypeVar("T")


def build(*resources: Resource, rollback: bool = True) -> Model:
    """A model of ``resources`` on node ``n1``, every hierarchy with the given rollback."""
    roots = build_model(resources, default_nodes=NODES).hierarchies
    return build_model(
        resources, {root: HierarchySpec(nodes=NODES, rollback=rollback) for root in roots}
    )


def runs(outputs: Iterable[Output]) -> list[RunAction]:
    """The commands among ``outputs``."""
    return [output for output in outputs if isinstance(output, RunAction)]


class Driver:
    """Plays the runtime for one engine: time, pending commands, answers.

    :param model: the model, or the resources to :func:`build` one from.
    """

    def __init__(self, model: Model | Sequence[Resource], *, now: float = 0.0) -> None:
        self.model = model if isinstance(model, Model) else build(*model)
        self.engine = Engine(self.model)
        self.now = now
        #: Commands waiting for their result, by id, in the order they were issued.
        self.pending: dict[int, RunAction] = {}
        #: Every output so far.
        self.log: list[Output] = []

    def _record(self, outputs: list[Output]) -> list[Output]:
        for command in runs(outputs):
            self.pending[command.command_id] = command
        self.log += outputs
        return outputs

    def send(self, event: object, *, at: float | None = None) -> list[Output]:
        """Handle one event at ``at`` (default: the current time)."""
        if at is not None:
            self.now = at
        return self._record(self.engine.handle(event, self.now))  # type: ignore[arg-type]

    def tick(self, to: float) -> list[Output]:
        """Move time to ``to`` and handle what is due."""
        self.now = to
        return self._record(self.engine.handle_timer(to))

    def start(self, found: Callable[[str], Result] | Result | None = None) -> list[Output]:
        """NodeStarted, then answer every probe (default: not running)."""
        outputs = self.send(NodeStarted())
        for command in runs(outputs):
            if found is None:
                result = Result.not_running()
            elif isinstance(found, Result):
                result = found
            else:
                result = found(command.tag)
            outputs += self.answer(command, result)
        return outputs

    def command(self, tag: str, action: Action | None = None) -> RunAction:
        """The pending command for ``tag`` (checking its action, if given)."""
        found = [c for c in self.pending.values() if c.tag == tag]
        assert len(found) == 1, f"expected one pending command for {tag!r}, got {found}"
        if action is not None:
            assert found[0].action is action, found[0]
        return found[0]

    def answer(
        self, which: RunAction | str, result: Result | None = None, *, action: Action | None = None
    ) -> list[Output]:
        """Report the result (default: ok) of a pending command, given or by its tag."""
        command = which if isinstance(which, RunAction) else self.command(which, action)
        del self.pending[command.command_id]
        event = ActionFinished(command.command_id, result or Result.ok())
        return self.send(event)

    def settle(
        self, results: Callable[[RunAction], Result] = lambda _command: Result.ok()
    ) -> list[Output]:
        """Answer pending commands, oldest first, until none is left; time does not move."""
        outputs: list[Output] = []
        for _ in range(100_000):
            if not self.pending:
                return outputs
            command = next(iter(self.pending.values()))
            outputs += self.answer(command, results(command))
        raise AssertionError("the engine kept issuing commands")

    def bring_in(self, root: str) -> list[Output]:
        """Request ``root`` in service and answer every command with ok."""
        return self.send(InServiceRequested(root)) + self.settle()

    def take_out(self, root: str, *, fenced: bool = False) -> list[Output]:
        """Request ``root`` out of service and answer every command with ok."""
        return self.send(OutOfServiceRequested(root, fenced=fenced)) + self.settle()

    def pending_actions(self) -> set[tuple[str, Action]]:
        """(tag, action) of every pending command."""
        return {(c.tag, c.action) for c in self.pending.values()}

    def state(self, tag: str) -> State:
        """A resource's state now."""
        return self.engine.snapshot().resources[tag].state

    def states(self) -> dict[str, State]:
        """Every resource's state now."""
        return {tag: s.state for tag, s in self.engine.snapshot().resources.items()}

    def reason(self, tag: str) -> str:
        """A resource's reason now."""
        return self.engine.snapshot().resources[tag].reason

    def of(self, kind: type[T]) -> list[T]:
        """Every output of one type so far."""
        return [output for output in self.log if isinstance(output, kind)]
