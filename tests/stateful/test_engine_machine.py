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
* an action the runtime holds (``ActionHeld``) is never timed out while held (a shutdown may
  still cancel it) and gives ``next_deadline()`` no time; once started (``ActionStarted``, at a
  later time) it times out at its start plus its timeout, not before and not after;
* bad input raises ``EngineUsageError`` and changes nothing (this includes ``ActionHeld`` and
  ``ActionStarted`` for a finished or unknown id); valid input never poisons it;
* after draining every action without time passing, the node is quiescent and settled.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
from hypothesis import HealthCheck, event, settings
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
    ActionHeld,
    ActionStarted,
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
    #: The runtime reported it held (waiting for a slot): its timeout does not run.
    held: bool = False
    #: When the runtime reported it started after being held (its timeout runs from then).
    started_at: float | None = None

    @property
    def deadline(self) -> float:
        """When the engine must time it out: never while held."""
        if self.held:
            return math.inf
        start = self.issued_at if self.started_at is None else self.started_at
        return start + self.command.timeout

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
        #: Like a runtime with this many slots, hold each new action while that many run
        #: (``None``: hold only when the hold rule says so).
        self.slots: int | None = None

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
        at_once = data.draw(st.sampled_from([True, True, False]), label="start at once")
        if at_once:
            self.start()
            for command_id in sorted(self.inflight):
                self.finish(command_id, data.draw(results(probe=True), label="probe result"))
        # Drawn after the probes answered at once: those stand for a start that went well.
        self.slots = data.draw(st.sampled_from([None, 1, 2]), label="slots")
        if at_once:
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
                    assert not flight.held, f"held action timed out: {output} {flight}"
                    assert flight.deadline <= self.now, (output, flight, self.now)
                else:
                    assert cause == "shutdown", output
                    assert flight.command.action is Action.QUICKCHECK, output
            elif isinstance(output, ActionTimedOut):
                assert cause == "timer", output
                (flight,) = [f for f in self.inflight.values() if f.command.tag == output.tag]
                assert not flight.held, f"held action timed out: {output} {flight}"
                assert flight.cancelled is None, f"timed out twice: {output} {flight}"
                assert flight.deadline <= self.now, (output, flight, self.now)
                assert output.action is flight.command.action, (output, flight)
                assert output.timeout == flight.command.timeout, (output, flight)
                if flight.started_at is not None:
                    event("an action timed out after a held start")
                # The CancelAction for it follows in the same batch.
                assert any(
                    isinstance(o, CancelAction) and o.command_id == flight.command.command_id
                    for o in outputs
                ), (output, outputs)
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
        if self.slots is not None:
            for command in issued:
                # A cancelled action keeps its slot until its task ends (its result comes).
                running = [f for f in self.inflight.values() if not f.held]
                if len(running) > self.slots:
                    self.hold(command.command_id)

    def hold(self, command_id: int) -> None:
        """Report an action held, and check that its timeout stopped and nothing else moved."""
        due = self.engine.next_deadline()
        outputs = self.call(ActionHeld(command_id))
        # Holding only stops a clock: nothing is decided, nothing else changes.
        assert outputs == [], outputs
        self.inflight[command_id].held = True
        after = self.engine.next_deadline()
        assert after is None or after >= self.now, after
        assert due is None or after is None or after >= due, (due, after)

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

    def running(self) -> list[int]:
        """Ids a runtime could answer: not held, or held and cancelled (never to start)."""
        return sorted(i for i, f in self.inflight.items() if not f.held or f.cancelled)

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def finish_one(self, data: st.DataObject) -> None:
        # Any action, even one held and never started: the engine must not depend on the
        # runtime starting what it held before answering it.
        command_id = data.draw(st.sampled_from(sorted(self.inflight)), label="command id")
        self.finish(command_id, data.draw(results(), label="result"))

    @precondition(lambda self: self.running())
    @rule(result=results())
    def finish_oldest(self, result: Result) -> None:
        # Rules are picked uniformly: a second way to answer makes answers come often enough
        # for long chains of actions (restore, check, recover, escalate, remove) to happen.
        # Held actions wait for start_held, as a runtime's would, so that rule gets to run.
        self.finish(min(self.running()), result)

    @precondition(lambda self: self.running())
    @rule(data=st.data())
    def finish_all(self, data: st.DataObject) -> None:
        """Answer everything running now, in a random order (what one batch could bring)."""
        for command_id in data.draw(st.permutations(self.running()), label="order"):
            self.finish(command_id, data.draw(results(), label="result"))

    @precondition(lambda self: any(not f.held for f in self.inflight.values()))
    @rule(data=st.data())
    def hold_some(self, data: st.DataObject) -> None:
        """The runtime has no slot for some actions yet: their timeouts must stop running.

        A runtime says so as it queues a new action; here any action in flight may be held,
        even one running for a while or already cancelled, so a late report must be harmless.
        """
        unheld = sorted(i for i, f in self.inflight.items() if not f.held)
        for command_id in data.draw(
            st.lists(st.sampled_from(unheld), min_size=1, unique=True), label="held ids"
        ):
            self.hold(command_id)

    @precondition(lambda self: any(f.held for f in self.inflight.values()))
    @rule(data=st.data(), wait=st.sampled_from([0.0, 0.5, 3.0, 30.0]), hang=st.booleans())
    def start_held(self, data: st.DataObject, wait: float, *, hang: bool) -> None:
        """Some time later the runtime starts a held action: its timeout runs from now.

        With ``hang``, the kit then never answers: time runs to just before the new deadline
        (no timeout yet), then to it (timed out exactly then).
        """
        command_id = data.draw(
            st.sampled_from(sorted(i for i, f in self.inflight.items() if f.held)),
            label="started id",
        )
        # Time passes the way the runtime moves it: through the timer, so that whatever else
        # fell due meanwhile is handled (and the held action must not be among it).
        self.advance_to(self.now + wait)
        flight = self.inflight[command_id]
        assert flight.held, flight
        outputs = self.call(ActionStarted(command_id))
        assert outputs == [], outputs
        event(f"held action started ({'cancelled' if flight.cancelled else 'running'})")
        flight.held = False
        flight.started_at = self.now
        if flight.cancelled is None:
            assert flight.deadline == self.now + flight.command.timeout
            due = self.engine.next_deadline()
            assert due is not None, flight
            assert due <= flight.deadline, (due, flight)
        if hang and flight.cancelled is None:
            deadline = flight.deadline
            self.advance_to(deadline - 0.125)  # timeouts are at least 1 s
            assert flight.cancelled is None, flight
            self.advance_to(deadline)
            assert flight.cancelled == "timeout", flight

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
            flight = self.inflight[command_id]
            if flight.held and not flight.cancelled:
                # A slot came free: start it (its timeout begins) and answer it at once.
                assert self.call(ActionStarted(command_id)) == []
                flight.held, flight.started_at = False, self.now
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
            ("event", ActionHeld(10_000_000)),
            ("event", ActionStarted(10_000_000)),
            ("event", ActionHeld(0)),
            ("event", ActionStarted(-1)),
            # Not ids, though equal to one (True == 1, 1.0 == 1) as dict keys.
            ("event", ActionHeld(True)),
            ("event", ActionStarted(True)),
            ("event", ActionStarted(1.0)),  # type: ignore[arg-type]
            ("event", ActionHeld("1")),  # type: ignore[arg-type]
            ("event", "not an event"),
            ("event", InServiceRequested(["not", "a", "tag"])),  # type: ignore[arg-type]
            ("event", OutOfServiceRequested(root, fenced="yes")),  # type: ignore[arg-type]
            ("timer", float("nan")),
            ("timer", float("inf")),
        ]
        if self.answered:
            done = data.draw(st.sampled_from(sorted(self.answered)), label="finished id")
            choices.append(("event", ActionFinished(done, Result.ok())))
            # A finished action can be neither held nor started, even one that was held.
            choices.append(("event", ActionHeld(done)))
            choices.append(("event", ActionStarted(done)))
        if self.inflight:
            choices.append(("event", ActionFinished(min(self.inflight), "ok")))  # type: ignore[arg-type]
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
        # A held action has no deadline at all (not one at or before now).
        times = [f.deadline for f in self.inflight.values() if f.cancelled is None and not f.held]
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
