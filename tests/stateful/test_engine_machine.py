"""A hypothesis state machine that drives the engine with random inputs and checks invariants.

Random hierarchies (DAGs with shared children, several roots) with random policies, random kit
results for whatever the engine asks, timeouts, time steps, requests in and out of service
(fenced or not), shutdown, and invalid input. The machine keeps a small model of the commands in
flight and checks, after every step:

* never two actions at once on one resource; each command id issued once, answered once;
* a restore is issued only when every child is in service and stable (its last result was
  good, it is not being removed); a remove only when every parent is out of service and not
  being restored (out-of-service order is the reverse of in-service order);
* no parent is in service while a child is out of service, unless the engine found it so when
  probing (it then takes the parent out, which the drain rule checks);
* ``next_deadline()`` is exactly the earliest uncancelled action deadline or quickcheck, is in
  the future, and nothing happens before it;
* bad input raises ``EngineUsageError`` and changes nothing; valid input never poisons it;
* after draining every action without time passing, the node is quiescent and settled.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lifekit._engine import (
    TRANSITIONS,
    ActionFinished,
    ActionTimedOut,
    CancelAction,
    Effect,
    Engine,
    EngineSnapshot,
    InServiceRequested,
    NodeStarted,
    OutOfServiceRequested,
    Output,
    RunAction,
    ShutdownCompleted,
    ShutdownRequested,
    Step,
)
from lifekit._model import Action, Model, Result, State
from lifekit.errors import EngineUsageError
from tests.strategies import models, results

IN_SERVICE = (State.ISP, State.ISU)
OUT_OF_SERVICE = (State.OSU, State.OSF)


@attrs.define
class Flight:
    """One command the engine issued and the test has not answered yet."""

    command: RunAction
    issued_at: float
    #: ``"timeout"`` or ``"shutdown"`` once the engine cancelled it.
    cancelled: str | None = None

    @property
    def deadline(self) -> float:
        return self.issued_at + self.command.timeout

    @property
    def step(self) -> Step:
        action = self.command.action
        if action is Action.QUICKCHECK:
            return Step.PROBE if self.command.probe else Step.CHECK
        return {
            Action.RESTORE: Step.RESTORE,
            Action.REMOVE: Step.REMOVE,
            Action.RECOVER: Step.RECOVER,
        }[action]


class EngineMachine(RuleBasedStateMachine):
    """Random inputs into one engine, with a model of what is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine
        self.model: Model
        self.now = 0.0
        self.called = False  # the engine has seen a time (before that it accepts any)
        self.started = False
        self.shutdown: bool | None = None
        self.shutdown_done = False
        self.inflight: dict[int, Flight] = {}
        self.issued: set[int] = set()
        self.answered: set[int] = set()
        #: Resources whose state was last set by a probe (found so, not made so).
        self.adopted: set[str] = set()
        #: Whether a resource's last result left it running and healthy enough to build on.
        self.maybe_up: dict[str, bool] = {}
        self.fenced: dict[str, bool] = {}

    # -----------------------------------------------------------------------------------------
    # Set-up and helpers

    @initialize(model=models(), data=st.data())
    def setup(self, model: Model, data: st.DataObject) -> None:
        self.model = model
        self.engine = Engine(model)
        self.maybe_up = dict.fromkeys(model.resources, False)
        self.fenced = dict.fromkeys(model.hierarchies, False)
        # Most runs start the node and answer its probes at once, so that their steps go to
        # what comes after; the others leave probing, and requests before it, to the rules.
        if data.draw(st.sampled_from([True, True, False]), label="start at once"):
            self.start()
            for command_id in sorted(self.inflight):
                self.finish(command_id, data.draw(results(probe=True), label="probe result"))
            roots = sorted(model.hierarchies)
            for root in data.draw(st.lists(st.sampled_from(roots), unique=True), label="in"):
                self.request(root)

    def snapshot(self) -> EngineSnapshot:
        return self.engine.snapshot()

    def call(self, event: Any) -> list[Output]:
        outputs = self.engine.handle(event, self.now)
        self.called = True
        return outputs

    def busy_tags(self) -> dict[str, Flight]:
        return {flight.command.tag: flight for flight in self.inflight.values()}

    def absorb(self, outputs: list[Output], *, cause: str) -> None:
        """Check a batch of outputs against the model and record its commands."""
        snapshot = self.snapshot()
        issued: list[RunAction] = []
        for output in outputs:
            if isinstance(output, RunAction):
                assert output.command_id not in self.issued, f"id issued twice: {output}"
                assert output.tag not in self.busy_tags(), f"two actions at once: {output}"
                assert not self.shutdown_done, f"action after ShutdownCompleted: {output}"
                resource = self.model.resources[output.tag]
                assert output.kind == resource.kind
                assert output.timeout == resource.policy.timeouts.for_action(output.action)
                assert output.probe == (cause == "start"), output
                if output.probe:
                    assert output.action is Action.QUICKCHECK
                if output.action is Action.REMOVE:
                    roots = self.model.roots_of[output.tag]
                    assert output.fenced == any(self.fenced[root] for root in roots), output
                else:
                    assert not output.fenced, output
                if self.shutdown is not None:
                    assert self.shutdown, f"action while leaving everything running: {output}"
                    assert output.action is Action.REMOVE, output
                self.issued.add(output.command_id)
                self.inflight[output.command_id] = Flight(output, self.now)
                issued.append(output)
            elif isinstance(output, CancelAction):
                flight = self.inflight.get(output.command_id)
                assert flight is not None, f"cancel for an action not in flight: {output}"
                assert flight.cancelled is None, f"cancelled twice: {output}"
                flight.cancelled = "timeout" if cause == "timer" else "shutdown"
                if cause == "timer":
                    assert flight.deadline <= self.now, output
                else:
                    assert cause == "shutdown", output
                    assert flight.command.action is Action.QUICKCHECK, output
            elif isinstance(output, ActionTimedOut):
                assert cause == "timer", output
            elif isinstance(output, ShutdownCompleted):
                assert self.shutdown is not None, output
                assert not self.shutdown_done, output
                self.shutdown_done = True
        if self.shutdown_done:
            assert not self.inflight, "ShutdownCompleted with actions in flight"
        busy = self.busy_tags()
        resources = snapshot.resources
        for command in issued:
            tag = command.tag
            if command.action is Action.RESTORE:
                for child in self.model.resources[tag].depends_on:
                    assert resources[child].state in IN_SERVICE, (command, resources[child])
                    assert self.maybe_up[child], (command, resources[child])
                    flight = busy.get(child)
                    assert flight is None or flight.command.action is not Action.REMOVE, command
            elif command.action is Action.REMOVE:
                for parent in self.model.parents[tag]:
                    assert resources[parent].state in OUT_OF_SERVICE, (command, resources[parent])
                    assert parent not in busy, (command, busy[parent].command)

    def finish(self, command_id: int, result: Result) -> None:
        flight = self.inflight[command_id]
        outputs = self.call(ActionFinished(command_id, result))
        del self.inflight[command_id]
        self.answered.add(command_id)
        tag = flight.command.tag
        if flight.cancelled == "shutdown":
            self.absorb(outputs, cause="result")
            return
        if flight.cancelled == "timeout":
            result = Result.soft_failure("timed out")
        effect = TRANSITIONS[(flight.step, result.outcome)]
        if effect is Effect.FAILED:
            recovering = any(
                isinstance(o, RunAction) and o.tag == tag and o.action is Action.RECOVER
                for o in outputs
            )
            self.maybe_up[tag] = recovering
        else:
            self.maybe_up[tag] = effect is Effect.UP
        if flight.step is Step.PROBE:
            self.adopted.add(tag)
        elif flight.step is Step.RESTORE or (flight.step is Step.REMOVE and effect is Effect.DOWN):
            self.adopted.discard(tag)
        self.absorb(outputs, cause="result")

    def advance_to(self, when: float) -> None:
        due = self.engine.next_deadline()
        outputs = self.engine.handle_timer(when)
        self.called = True
        self.now = when
        if due is None or when < due:
            assert outputs == [], f"work before the deadline {due}: {outputs}"
        else:
            assert outputs, f"nothing happened at the deadline {due}"
        self.absorb(outputs, cause="timer")
        for flight in self.inflight.values():
            assert flight.cancelled is not None or flight.deadline > when, flight

    def ancestors_or_self(self, tag: str) -> set[str]:
        seen = {tag}
        stack = [tag]
        while stack:
            for parent in self.model.parents[stack.pop()]:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    def fencing_above(self, snapshot: EngineSnapshot, tag: str) -> bool:
        return any(snapshot.resources[t].fencing_required for t in self.ancestors_or_self(tag))

    # -----------------------------------------------------------------------------------------
    # Rules: valid input

    @precondition(lambda self: not self.started and self.shutdown is None)
    @rule()
    def start_node(self) -> None:
        self.start()

    def start(self) -> None:
        outputs = self.call(NodeStarted())
        self.started = True
        self.absorb(outputs, cause="start")
        probed = sorted(o.tag for o in outputs if isinstance(o, RunAction))
        assert probed == sorted(self.model.resources)

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def finish_one(self, data: st.DataObject) -> None:
        command_id = data.draw(st.sampled_from(sorted(self.inflight)), label="command id")
        self.finish(command_id, data.draw(results(), label="result"))

    @precondition(lambda self: self.inflight)
    @rule(result=results())
    def finish_oldest(self, result: Result) -> None:
        # Rules are picked uniformly: a second way to answer makes answers come often enough
        # for long chains of actions (restore, check, recover, escalate, remove) to happen.
        self.finish(min(self.inflight), result)

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def finish_all(self, data: st.DataObject) -> None:
        """Answer everything in flight now, in a random order (what one batch could bring)."""
        for command_id in data.draw(st.permutations(sorted(self.inflight)), label="order"):
            self.finish(command_id, data.draw(results(), label="result"))

    @rule(step=st.sampled_from([0.0, 0.25, 1.0, 2.0, 5.0, 30.0]))
    def advance(self, step: float) -> None:
        self.advance_to(self.now + step)

    @precondition(lambda self: self.engine.next_deadline() is not None)
    @rule()
    def advance_to_deadline(self) -> None:
        due = self.engine.next_deadline()
        assert due is not None
        self.advance_to(max(self.now, due))

    @precondition(lambda self: self.shutdown is None)
    @rule(data=st.data())
    def request_in(self, data: st.DataObject) -> None:
        self.request(data.draw(st.sampled_from(sorted(self.model.hierarchies)), label="root"))

    def request(self, root: str) -> None:
        self.fenced[root] = False
        self.absorb(self.call(InServiceRequested(root)), cause="request")
        assert self.snapshot().hierarchies[root].wanted_in_service is True
        assert self.snapshot().hierarchies[root].failed is None

    @precondition(lambda self: self.shutdown is None)
    @rule(data=st.data(), fenced=st.booleans())
    def request_out(self, data: st.DataObject, fenced: bool) -> None:
        root = data.draw(st.sampled_from(sorted(self.model.hierarchies)), label="root")
        self.fenced[root] = fenced
        self.absorb(self.call(OutOfServiceRequested(root, fenced=fenced)), cause="request")
        assert self.snapshot().hierarchies[root].wanted_in_service is False

    @precondition(lambda self: self.shutdown is None)
    @rule(take_out=st.booleans())
    def request_shutdown(self, take_out: bool) -> None:
        self.shutdown = take_out
        outputs = self.call(ShutdownRequested(take_out=take_out))
        self.absorb(outputs, cause="shutdown")
        assert self.snapshot().shutting_down

    @precondition(lambda self: self.inflight)
    @rule(fail_restores=st.booleans())
    def drain(self, fail_restores: bool) -> None:
        """Answer everything, without time passing, until nothing is in flight.

        The :meth:`quiescent` invariant then checks the settled state.
        """
        budget = 12 * len(self.model.resources) + 12
        while self.inflight:
            command_id = min(self.inflight)
            action = self.inflight[command_id].command.action
            if fail_restores and action is Action.RESTORE:
                result = Result.soft_failure("cannot start")
            else:
                result = Result.ok()
            self.finish(command_id, result)
            budget -= 1
            assert budget >= 0, "the engine keeps issuing actions: a retry loop"

    @invariant()
    def quiescent(self) -> None:
        """With nothing in flight the engine has settled: check what it settled on."""
        if not hasattr(self, "engine") or self.inflight:
            return
        snapshot = self.snapshot()
        resources = snapshot.resources
        if self.shutdown is not None:
            assert self.shutdown_done
            assert self.engine.shutdown_completed
        if not self.started or self.shutdown is False:
            return  # nothing was probed, or everything is left as it is
        for tag, status in resources.items():
            if status.state in IN_SERVICE:
                for child in self.model.resources[tag].depends_on:
                    assert resources[child].state not in (*OUT_OF_SERVICE, State.UNKNOWN) or (
                        self.fencing_above(snapshot, tag)
                    ), (status, resources[child])
            roots = self.model.roots_of[tag]
            wanted_out = self.shutdown or all(
                snapshot.hierarchies[root].wanted_in_service is False for root in roots
            )
            if wanted_out:
                assert status.state in OUT_OF_SERVICE or self.fencing_above(snapshot, tag), status
        if self.shutdown is not None:
            return
        if any(status.fencing_required for status in resources.values()):
            return
        for root, hierarchy in snapshot.hierarchies.items():
            members = self.model.hierarchies[root].members
            if (
                hierarchy.wanted_in_service
                and hierarchy.failed is None
                and all(resources[tag].state is not State.OSF for tag in members)
            ):
                assert hierarchy.state in IN_SERVICE, (hierarchy, [resources[t] for t in members])

    # -----------------------------------------------------------------------------------------
    # Rules: invalid input changes nothing

    @rule(data=st.data())
    def bad_input(self, data: st.DataObject) -> None:
        root = min(self.model.hierarchies)
        choices: list[tuple[str, Any]] = [
            ("event", InServiceRequested("no-such-root")),
            ("event", OutOfServiceRequested("no-such-root")),
            ("event", ActionFinished(10_000_000, Result.ok())),
            ("event", ActionFinished(-1, Result.ok())),
            ("event", "not an event"),
            ("event", InServiceRequested(["not", "a", "tag"])),  # type: ignore[arg-type]
            ("event", OutOfServiceRequested(root, fenced="yes")),  # type: ignore[arg-type]
            ("timer", float("nan")),
            ("timer", float("inf")),
        ]
        if self.answered:
            choices.append(("event", ActionFinished(min(self.answered), Result.ok())))
        if self.inflight:
            choices.append(("event", ActionFinished(min(self.inflight), "ok")))
        if self.started or self.shutdown is not None:
            choices.append(("event", NodeStarted()))
        if self.shutdown is not None:
            choices.append(("event", ShutdownRequested(take_out=True)))
            choices.append(("event", InServiceRequested(root)))
            choices.append(("event", OutOfServiceRequested(root)))
        else:
            choices.append(("event", ShutdownRequested(take_out="yes")))  # type: ignore[arg-type]
        if self.called:
            # A valid event, but at a time before the engine's last one.
            choices.append(("timer", self.now - 1.0))
            choices.append(("backwards", InServiceRequested(root)))
        how, value = data.draw(st.sampled_from(choices), label="bad input")
        before, due = self.snapshot(), self.engine.next_deadline()
        try:
            if how == "timer":
                self.engine.handle_timer(value)
            elif how == "backwards":
                self.engine.handle(value, self.now - 1.0)
            else:
                self.engine.handle(value, self.now)
        except EngineUsageError:
            pass
        else:
            raise AssertionError(f"accepted bad input {how} {value!r}")
        assert self.snapshot() == before
        assert self.engine.next_deadline() == due

    # -----------------------------------------------------------------------------------------
    # Invariants

    @invariant()
    def actions_match_model(self) -> None:
        if not hasattr(self, "engine"):
            return
        snapshot = self.snapshot()
        assert not self.engine.failed
        assert snapshot.actions_in_flight == len(self.inflight) == self.engine.actions_in_flight
        busy = self.busy_tags()
        for tag, status in snapshot.resources.items():
            flight = busy.get(tag)
            assert status.action == (flight.command.action if flight else None), (status, flight)

    @invariant()
    def no_parent_in_service_over_an_out_child(self) -> None:
        if not hasattr(self, "engine"):
            return
        resources = self.snapshot().resources
        for tag, status in resources.items():
            if status.state not in IN_SERVICE or tag in self.adopted:
                continue
            for child in self.model.resources[tag].depends_on:
                assert resources[child].state in IN_SERVICE, (status, resources[child])

    @invariant()
    def next_deadline_is_exact(self) -> None:
        if not hasattr(self, "engine"):
            return
        snapshot = self.snapshot()
        due = self.engine.next_deadline()
        times = [f.deadline for f in self.inflight.values() if f.cancelled is None]
        checks = [s.next_check_at for s in snapshot.resources.values()]
        times += [at for at in checks if at is not None]
        assert due == (min(times) if times else None), (due, times)
        if due is not None and self.called:
            assert due > self.now
        busy = self.busy_tags()
        for tag, status in snapshot.resources.items():
            if status.next_check_at is not None:
                assert status.state in IN_SERVICE, status
                assert tag not in busy, status
            elif status.state is State.ISP and tag not in busy and self.shutdown is None:
                raise AssertionError(f"in service and never checked again: {status}")

    @invariant()
    def reasons_are_given(self) -> None:
        if not hasattr(self, "engine"):
            return
        snapshot = self.snapshot()
        for status in snapshot.resources.values():
            assert status.reason, status
            if status.fencing_required:
                assert status.state is State.ISU, status
        for hierarchy in snapshot.hierarchies.values():
            assert hierarchy.reason, hierarchy


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(
    max_examples=200,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
