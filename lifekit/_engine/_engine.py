"""The resource engine: a pure, synchronous, deterministic state machine for one node.

Theory of operation
===================

The engine owns the state of every resource on this node and decides every kit action. It
does no I/O and never reads a clock: the runtime passes ``now`` into every call, runs the
:class:`RunAction` commands it gets back, reports each one's :class:`ActionFinished`, and calls
:meth:`Engine.handle_timer` at :meth:`Engine.next_deadline`. Given the same calls, it gives the
same outputs.

Phases. Internally each resource is in one *phase*, which says what the engine knows of it:

* ``UNPROBED``: not probed yet (state UNKNOWN). No action but the probe.
* ``OUT``: known not running here (OSU, or OSF with the failure's reason).
* ``IN``: running here (ISP, or ISU when degraded or recovering).
* ``DIRTY``: possibly running, and must be removed before anything else (a failed restore, a
  failed probe, an escalated failure). Shown as ISU with the reason.
* ``STUCK``: a remove failed. It may still be running; the engine does nothing more to it and
  says fencing is needed. Shown as ISU. A new request for one of its hierarchies retries.

At most one action runs per resource (``busy``); every command id gets exactly one result.

Reconciliation. Requests do not run actions directly; they change what is *demanded* of
each resource: ``in`` (some hierarchy containing it was requested in service and has not
failed, or failed but keeps it, which is what rollback leaves running), ``out`` (requested out,
failed, or *blocked* by its own failure), or ``as found`` (nobody has asked yet: a resource found
running at start is adopted and monitored, never restarted). From the demand:

* ``target(r)``: demand ``in`` and ``target`` holds for every child (bring it in service);
* ``stay(r)``: demand is not ``out`` and every child may stay and is running (phase ``IN``) or
  not probed yet. So a parent found running above a child that is not running or broken is
  taken out (it is running without what it needs), and everything above a failing resource
  goes out before it does.

After each input the engine settles, in two passes (h11 style, re-applied to a fixed point):
first ``target`` and ``stay`` are recomputed for the resources whose inputs changed, propagating
upward through a worklist; then each touched resource decides:

* ``OUT`` and ``target`` and every child *up* (``IN``, may stay, not being removed) -> restore
  (children before parents; independent branches concurrently);
* ``IN`` and not ``stay``, or ``DIRTY``, and every parent *down* (``OUT`` and not being
  restored) -> remove (parents before children).

Each resource keeps counts of its up children, down parents, and children that let it stay or
be a target, updated when a neighbour changes; so a decision is O(1), both passes only visit
what changed, a 10,000-resource hierarchy settles in linear time, and nothing recurses, so a
1,000-long chain is fine.

Results. The effect of each kit result is data: :data:`TRANSITIONS` maps (step, outcome) to an
:class:`Effect`. A quickcheck failure runs ``recover`` while the temporal recovery limit allows;
past it, on a hard failure, when local recovery is off, or when ``recover`` fails, the failure
*escalates*: the resource goes ``DIRTY`` and is blocked (demand ``out``) until a request for one
of its hierarchies retries it, so it and everything that depends on it go out; with failover
enabled, each hierarchy containing it that is wanted here (requested in, or left as found with
its root running) also fails: everything in it is taken out, parents first, and
:class:`HierarchyFailed` asks for failover. A fatal result (configuration error) is handled the
same way but never asks for failover and is never retried except by an explicit request. A
quickcheck failure of a resource that is already on its way out is not recovered: it is removed.
A failed restore blocks the resource and fails the attempt of each hierarchy requested in:
with rollback, what that attempt brought up (or was bringing up) goes out and what was running
before stays; without, everything running or being restored stays. An action past its timeout
is cancelled and its result counts as a soft failure (so a hung remove needs fencing).

Shutdown. :class:`ShutdownRequested` cancels every quickcheck. With ``take_out`` it lets probes
finish (to know what to remove) and takes every hierarchy out; otherwise it cancels probes too
and starts nothing more. :class:`ShutdownCompleted` comes once no action is in flight.

Errors. Bad input raises :class:`EngineUsageError` before any change. Any other exception is a
bug: the engine poisons itself and every later call raises :class:`EngineFailed`; the runtime
then stops acting rather than guess.

Deadlines. Action timeouts and quickcheck times live in heaps with lazy deletion.
Quickchecks run on a per-(kind, interval) grid: resources of one kind checked at the same
interval fall due together (the runtime batches them into one kit call), and different kinds
are spread apart. A resource's next check is scheduled only once its previous action ended, so
checks never overlap.
"""

from __future__ import annotations

import enum
import heapq
import math
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from lifekit._engine._messages import (
    ActionFinished,
    ActionHeld,
    ActionStarted,
    ActionTimedOut,
    CancelAction,
    Event,
    FencingRequired,
    HierarchyFailed,
    HierarchyInService,
    HierarchyOutOfService,
    InServiceRequested,
    NodeStarted,
    OutOfServiceRequested,
    Output,
    ProbingCompleted,
    QuickcheckFailed,
    RecoveryLimitReached,
    RecoveryStarted,
    ResourceFailed,
    ResourceRecovered,
    RunAction,
    ShutdownCompleted,
    ShutdownRequested,
    StateChanged,
)
from lifekit._model import Action, Model, Outcome, Result, State
from lifekit.errors import EngineFailed, EngineUsageError

__all__ = [
    "TRANSITIONS",
    "Effect",
    "Engine",
    "EngineSnapshot",
    "HierarchyStatus",
    "ResourceStatus",
    "Step",
]


class Phase(enum.Enum):
    UNPROBED = "unprobed"
    OUT = "out"
    IN = "in"
    DIRTY = "dirty"
    STUCK = "stuck"


class Step(enum.Enum):
    """What an action was for, which decides how its result is read."""

    PROBE = "probe"
    CHECK = "check"
    RESTORE = "restore"
    REMOVE = "remove"
    RECOVER = "recover"


class Effect(enum.Enum):
    """What a result does to a resource (see :data:`TRANSITIONS`)."""

    #: Running: phase IN (ISP, or ISU if the result was degraded).
    UP = "up"
    #: Cleanly stopped: phase OUT (OSU, or OSF if a failure is pending).
    DOWN = "down"
    #: Found possibly running in a bad state: remove it first.
    FOUND_BROKEN = "found_broken"
    #: Found broken and not to be retried here.
    FOUND_BROKEN_HARD = "found_broken_hard"
    #: A configuration error found while probing: OSF, blocked, never retried.
    FOUND_FATAL = "found_fatal"
    #: A monitored resource failed: local recovery if allowed, else escalate.
    FAILED = "failed"
    #: Escalate at once (hard failure, or recover failed).
    ESCALATE = "escalate"
    #: Escalate as a configuration error.
    ESCALATE_FATAL = "escalate_fatal"
    #: Restore failed: clean up, fail the hierarchy's attempt.
    RESTORE_FAILED = "restore_failed"
    RESTORE_FAILED_HARD = "restore_failed_hard"
    RESTORE_FATAL = "restore_fatal"
    #: Remove failed: possibly still running, fencing required.
    REMOVE_FAILED = "remove_failed"


_O = Outcome
#: (step, outcome) -> effect. Every combination is listed; a test checks the table is total.
TRANSITIONS: Mapping[tuple[Step, Outcome], Effect] = MappingProxyType(
    {
        (Step.PROBE, _O.OK): Effect.UP,
        (Step.PROBE, _O.DEGRADED): Effect.UP,
        (Step.PROBE, _O.NOT_RUNNING): Effect.DOWN,
        (Step.PROBE, _O.SOFT_FAILURE): Effect.FOUND_BROKEN,
        (Step.PROBE, _O.HARD_FAILURE): Effect.FOUND_BROKEN_HARD,
        (Step.PROBE, _O.FATAL): Effect.FOUND_FATAL,
        (Step.CHECK, _O.OK): Effect.UP,
        (Step.CHECK, _O.DEGRADED): Effect.UP,
        (Step.CHECK, _O.NOT_RUNNING): Effect.FAILED,
        (Step.CHECK, _O.SOFT_FAILURE): Effect.FAILED,
        (Step.CHECK, _O.HARD_FAILURE): Effect.ESCALATE,
        (Step.CHECK, _O.FATAL): Effect.ESCALATE_FATAL,
        (Step.RESTORE, _O.OK): Effect.UP,
        (Step.RESTORE, _O.DEGRADED): Effect.UP,
        (Step.RESTORE, _O.NOT_RUNNING): Effect.RESTORE_FAILED,
        (Step.RESTORE, _O.SOFT_FAILURE): Effect.RESTORE_FAILED,
        (Step.RESTORE, _O.HARD_FAILURE): Effect.RESTORE_FAILED_HARD,
        (Step.RESTORE, _O.FATAL): Effect.RESTORE_FATAL,
        (Step.REMOVE, _O.OK): Effect.DOWN,
        (Step.REMOVE, _O.NOT_RUNNING): Effect.DOWN,
        (Step.REMOVE, _O.DEGRADED): Effect.DOWN,
        (Step.REMOVE, _O.SOFT_FAILURE): Effect.REMOVE_FAILED,
        (Step.REMOVE, _O.HARD_FAILURE): Effect.REMOVE_FAILED,
        (Step.REMOVE, _O.FATAL): Effect.REMOVE_FAILED,
        (Step.RECOVER, _O.OK): Effect.UP,
        (Step.RECOVER, _O.DEGRADED): Effect.UP,
        (Step.RECOVER, _O.NOT_RUNNING): Effect.ESCALATE,
        (Step.RECOVER, _O.SOFT_FAILURE): Effect.ESCALATE,
        (Step.RECOVER, _O.HARD_FAILURE): Effect.ESCALATE,
        (Step.RECOVER, _O.FATAL): Effect.ESCALATE_FATAL,
    }
)

_STEP_ACTION = {
    Step.PROBE: Action.QUICKCHECK,
    Step.CHECK: Action.QUICKCHECK,
    Step.RESTORE: Action.RESTORE,
    Step.REMOVE: Action.REMOVE,
    Step.RECOVER: Action.RECOVER,
}

_OUT, _AS_FOUND, _IN = 0, 1, 2

_PHASE_STATE = {
    Phase.UNPROBED: State.UNKNOWN,
    Phase.DIRTY: State.ISU,
    Phase.STUCK: State.ISU,
}


@attrs.frozen
class ResourceStatus:
    """One resource as the engine sees it at one moment."""

    tag: str
    kind: str
    state: State
    reason: str
    #: The action running now, if any.
    action: Action | None
    #: When the last quickcheck finished and what it said.
    last_check_at: float | None
    last_check: Result | None
    #: A remove failed: fencing (or an operator's confirmation) is needed.
    fencing_required: bool
    #: Local recoveries counted in the current window.
    recent_recoveries: int
    #: When the next quickcheck falls due (``None``: none scheduled, e.g. not in service).
    next_check_at: float | None = None


@attrs.frozen
class HierarchyStatus:
    """One hierarchy as the engine sees it: the root's state, and why it failed if it did."""

    root: str
    state: State
    reason: str
    #: ``True``/``False``: requested in / out of service; ``None``: left as found.
    wanted_in_service: bool | None
    failed: str | None


@attrs.frozen
class EngineSnapshot:
    """An immutable picture of the whole engine, for status documents and decisions."""

    at: float
    resources: Mapping[str, ResourceStatus]
    hierarchies: Mapping[str, HierarchyStatus]
    shutting_down: bool
    actions_in_flight: int


# Internal records are mutable on purpose: the engine updates one resource per result, and
# rebuilding frozen records for 10,000 resources on every result would make bring-up
# quadratic. Nothing outside the engine ever sees them; snapshots are frozen copies.


class _Res:
    __slots__ = (
        "blocked",
        "busy",
        "check_due",
        "children",
        "down",
        "fail_reason",
        "fencing",
        "kind",
        "last_check",
        "last_check_at",
        "n_down",
        "n_ok",
        "n_target",
        "n_up",
        "ok",
        "out_reason",
        "parents",
        "phase",
        "policy",
        "reason",
        "recoveries",
        "roots",
        "state",
        "stay",
        "tag",
        "target",
        "up",
    )

    def __init__(self, model: Model, tag: str) -> None:
        resource = model.resources[tag]
        self.tag = tag
        self.kind = resource.kind
        self.policy = resource.policy
        self.children = resource.depends_on
        self.parents = model.parents[tag]
        self.roots = model.roots_of[tag]
        self.phase = Phase.UNPROBED
        self.state = State.UNKNOWN
        self.reason = "not probed yet"
        self.busy: _Flight | None = None
        # target/stay start at their fixed point for "nobody asked, nothing probed".
        self.target = False
        self.stay = True
        # Flags neighbours count (see Engine._refresh), and the counts of this resource's own
        # neighbours, kept so that no decision has to scan a wide list of children or parents.
        self.up = False  # IN, may stay, not being removed: a parent may be restored above it
        self.down = False  # OUT and not being restored: a child below it may be removed
        self.ok = True  # may stay and running (or not probed): its parents may stay
        self.n_up = 0
        self.n_down = 0
        self.n_ok = len(self.children)
        self.n_target = 0
        self.blocked = False
        self.fencing = False
        self.fail_reason: str | None = None
        self.out_reason: str | None = None
        self.recoveries: deque[float] = deque()
        self.check_due: float | None = None
        self.last_check: Result | None = None
        self.last_check_at: float | None = None


class _Hier:
    __slots__ = ("attempt", "desired", "failed", "fenced", "members", "retained", "root")

    def __init__(self, root: str, members: tuple[str, ...]) -> None:
        self.root = root
        self.members = members
        self.desired: bool | None = None
        self.failed: str | None = None
        self.retained: frozenset[str] = frozenset()
        self.attempt: set[str] = set()
        self.fenced = False


class _Flight:
    __slots__ = ("cancel", "command", "deadline", "held", "step")

    def __init__(self, command: RunAction, step: Step, deadline: float) -> None:
        self.command = command
        self.step = step
        #: When it times out; moved by ActionStarted (heap entries for older times are stale).
        self.deadline = deadline
        #: Between ActionHeld and ActionStarted: waiting for a runtime slot, no deadline.
        self.held = False
        #: Why it is being cancelled: a timeout reason (the result counts as that failure), or
        #: shutdown (the result is ignored). None while it runs normally.
        self.cancel: tuple[str, bool] | None = None


class Engine:
    """The resource engine of one node. See the module docstring for how it works.

    :param model: the validated resources and hierarchies.
    """

    def __init__(self, model: Model) -> None:
        self._model = model
        self._res = {tag: _Res(model, tag) for tag in model.resources}
        self._hier = {
            root: _Hier(root, hierarchy.members) for root, hierarchy in model.hierarchies.items()
        }
        self._position = {tag: index for index, tag in enumerate(model.resources)}
        self._flights: dict[int, _Flight] = {}
        self._next_id = 1
        self._deadlines: list[tuple[float, int]] = []
        self._checks: list[tuple[float, int, str]] = []
        self._check_seq = 0
        self._now = -math.inf
        self._started = False
        self._unprobed = len(self._res)
        self._shutdown: bool | None = None
        self._shutdown_done = False
        self._failure: BaseException | None = None
        # Resources outside OUT per hierarchy, to say when one is wholly out of service.
        self._not_out = {root: len(h.members) for root, h in self._hier.items()}
        self._target_queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._to_decide: dict[str, None] = {}
        self._out: list[Output] = []

    # -----------------------------------------------------------------------------------------
    # Public API

    @property
    def model(self) -> Model:
        """The model this engine runs."""
        return self._model

    def handle(self, event: Event, now: float) -> list[Output]:
        """Apply one event at time ``now`` and return the commands and notifications it causes.

        :raises EngineUsageError: the event is invalid here; nothing changed.
        :raises EngineFailed: the engine is poisoned by an earlier internal error.
        """
        self._check_usable(now)
        self._validate(event)
        return self._guarded(self._apply, event, now)

    def handle_timer(self, now: float) -> list[Output]:
        """Act on every deadline at or before ``now`` (timeouts, quickchecks).

        :raises EngineUsageError: ``now`` is not a time the engine can accept; nothing changed.
        :raises EngineFailed: the engine is poisoned by an earlier internal error.
        """
        self._check_usable(now)
        return self._guarded(self._on_timer, None, now)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or ``None`` if nothing is due."""
        self._drop_stale()
        times = []
        if self._deadlines:
            times.append(self._deadlines[0][0])
        if self._checks:
            times.append(self._checks[0][0])
        return min(times) if times else None

    @property
    def failed(self) -> bool:
        """Whether the engine poisoned itself."""
        return self._failure is not None

    @property
    def shutdown_completed(self) -> bool:
        """Whether a requested shutdown has completed."""
        return self._shutdown_done

    @property
    def actions_in_flight(self) -> int:
        """How many actions are running now."""
        return len(self._flights)

    def resource_status(self, tag: str) -> ResourceStatus:
        """One resource's status now, without a whole snapshot. Changes nothing.

        :raises KeyError: no resource has this tag.
        """
        res = self._res[tag]
        window_start = self._now - res.policy.recovery_limit.window
        return ResourceStatus(
            tag=tag,
            kind=res.kind,
            state=res.state,
            reason=res.reason,
            action=res.busy.command.action if res.busy else None,
            last_check_at=res.last_check_at,
            last_check=res.last_check,
            fencing_required=res.fencing,
            recent_recoveries=sum(1 for at in res.recoveries if at > window_start),
            next_check_at=res.check_due,
        )

    def hierarchy_status(self, root: str) -> HierarchyStatus:
        """One hierarchy's status now, without a whole snapshot. Changes nothing.

        :raises KeyError: no hierarchy is named ``root``.
        """
        hier = self._hier[root]
        top = self._res[root]
        state, reason = top.state, top.reason
        if hier.failed is not None and not state.in_service:
            state, reason = State.OSF, hier.failed
        return HierarchyStatus(
            root=root,
            state=state,
            reason=reason,
            wanted_in_service=hier.desired,
            failed=hier.failed,
        )

    def snapshot(self) -> EngineSnapshot:
        """A frozen picture of every resource and hierarchy. Changes nothing."""
        return EngineSnapshot(
            at=self._now,
            resources=MappingProxyType({tag: self.resource_status(tag) for tag in self._res}),
            hierarchies=MappingProxyType(
                {root: self.hierarchy_status(root) for root in self._hier}
            ),
            shutting_down=self._shutdown is not None,
            actions_in_flight=len(self._flights),
        )

    # -----------------------------------------------------------------------------------------
    # Guards

    def _check_usable(self, now: float) -> None:
        if self._failure is not None:
            raise EngineFailed(
                "the engine stopped after an internal error and accepts no more events"
            ) from self._failure
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise EngineUsageError(
                f"now must be a finite number of seconds from a monotonic clock, got {now!r}"
            )
        if now < self._now:
            raise EngineUsageError(
                f"time went backwards: now={now!r} but the engine was already at {self._now!r}; "
                "pass a monotonic clock"
            )

    def _running_id(self, command_id: object, hint: str) -> int:
        """``command_id`` if it names a running action, else EngineUsageError with ``hint``."""
        if (
            isinstance(command_id, bool)
            or not isinstance(command_id, int)
            or command_id not in self._flights
        ):
            raise EngineUsageError(f"no action with command id {command_id!r} is running; {hint}")
        return command_id

    def _validate(self, event: Event) -> None:
        if isinstance(event, NodeStarted):
            if self._started:
                raise EngineUsageError("NodeStarted was already handled; probe only once")
            if self._shutdown is not None:
                raise EngineUsageError(
                    "NodeStarted after ShutdownRequested: the node is shutting down and starts "
                    "nothing new"
                )
        elif isinstance(event, InServiceRequested | OutOfServiceRequested):
            if not isinstance(event.root, str) or event.root not in self._hier:
                known = ", ".join(sorted(self._hier)) or "none"
                raise EngineUsageError(
                    f"no hierarchy is named {event.root!r}; hierarchies are named by their "
                    f"root's tag (known: {known})"
                )
            if isinstance(event, OutOfServiceRequested) and not isinstance(event.fenced, bool):
                raise EngineUsageError(
                    f"OutOfServiceRequested.fenced must be True or False, got {event.fenced!r}"
                )
            if self._shutdown is not None:
                raise EngineUsageError(
                    f"cannot change hierarchy {event.root!r}: the node is shutting down"
                )
        elif isinstance(event, ActionHeld | ActionStarted):
            command_id = self._running_id(
                event.command_id,
                "ActionHeld and ActionStarted are for a RunAction the runtime holds back",
            )
            held = self._flights[command_id].held
            if isinstance(event, ActionStarted) and not held:
                # Restarting the clock of an action already running would let a faulty
                # runtime keep a hung action alive for ever.
                raise EngineUsageError(
                    f"action {command_id} was not held: ActionStarted only follows ActionHeld"
                )
            if isinstance(event, ActionHeld) and held:
                raise EngineUsageError(f"action {command_id} is already held")
        elif isinstance(event, ActionFinished):
            self._running_id(event.command_id, "each command gets exactly one ActionFinished")
            result = event.result
            if not isinstance(result, Result) or not isinstance(result.outcome, Outcome):
                raise EngineUsageError(
                    f"ActionFinished.result must be a lifekit Result with an Outcome, got "
                    f"{result!r}; build one with Result.ok(), Result.soft_failure(reason), ..."
                )
        elif isinstance(event, ShutdownRequested):
            if self._shutdown is not None:
                raise EngineUsageError("a shutdown was already requested")
            if not isinstance(event.take_out, bool):
                raise EngineUsageError(
                    f"ShutdownRequested.take_out must be True or False, got {event.take_out!r}"
                )
        else:
            raise EngineUsageError(f"not an engine event: {event!r}")

    def _guarded(
        self, method: Callable[[Any, float], None], event: object, now: float
    ) -> list[Output]:
        self._now = now
        self._out = []
        try:
            method(event, now)
            self._settle(now)
            self._check_shutdown(now)
        except BaseException as exc:
            # Deliberately broad: whatever went wrong inside (even an interrupt half-way through
            # an update), the engine's state can no longer be trusted, and a guess could put a
            # resource in service on two nodes.
            self._failure = exc
            if not isinstance(exc, Exception):
                raise
            raise EngineFailed(f"internal engine error: {exc!r}") from exc
        out, self._out = self._out, []
        return out

    # -----------------------------------------------------------------------------------------
    # Inputs

    def _apply(self, event: Event, now: float) -> None:
        if isinstance(event, NodeStarted):
            self._started = True
            for res in self._res.values():
                if res.busy is None:
                    self._run(res, Step.PROBE, now)
            if not self._res:
                self._out.append(ProbingCompleted(at=now))
        elif isinstance(event, InServiceRequested):
            hier = self._hier[event.root]
            hier.desired = True
            hier.failed = None
            hier.retained = frozenset()
            hier.attempt = set()
            hier.fenced = False
            for tag in hier.members:
                res = self._res[tag]
                res.blocked = False
                self._retry_stuck(res, now)
            self._touch_targets(hier.members)
        elif isinstance(event, OutOfServiceRequested):
            hier = self._hier[event.root]
            hier.desired = False
            hier.failed = None
            hier.retained = frozenset()
            hier.fenced = event.fenced
            for tag in hier.members:
                res = self._res[tag]
                self._retry_stuck(res, now)
                if self._demand(res) == _OUT:
                    # Only for what really goes out: a resource another hierarchy keeps in
                    # service must not later be said to have gone out "on request".
                    res.out_reason = "taken out of service on request"
            self._touch_targets(hier.members)
        elif isinstance(event, ActionHeld):
            # No deadline while held: its old heap entry no longer matches and is skipped.
            flight = self._flights[event.command_id]
            flight.held = True
            flight.deadline = math.inf
        elif isinstance(event, ActionStarted):
            flight = self._flights[event.command_id]
            flight.held = False
            if flight.cancel is None:
                flight.deadline = now + flight.command.timeout
                heapq.heappush(self._deadlines, (flight.deadline, event.command_id))
        elif isinstance(event, ActionFinished):
            self._finished(event.command_id, event.result, now)
        else:
            self._start_shutdown(event.take_out, now)

    def _retry_stuck(self, res: _Res, now: float) -> None:
        if res.phase is Phase.STUCK:
            res.fencing = False
            self._set_phase(res, Phase.DIRTY, now, "remove failed earlier; retrying on request")

    def _start_shutdown(self, take_out: bool, now: float) -> None:
        self._shutdown = take_out
        # Monitoring stops. Probes are only needed if something is to be taken out: a resource
        # whose probe was cancelled is never known, so it could not be removed.
        cancelled = (Step.CHECK,) if take_out else (Step.CHECK, Step.PROBE)
        for flight in self._flights.values():
            if flight.step in cancelled and flight.cancel is None:
                flight.cancel = ("node shutting down", False)
                self._out.append(CancelAction(flight.command.command_id, "node shutting down"))
        self._checks.clear()
        for res in self._res.values():
            res.check_due = None
        if take_out:
            for hier in self._hier.values():
                hier.desired = False
                hier.failed = None
                hier.retained = frozenset()
                for tag in hier.members:
                    self._res[tag].out_reason = "taken out of service: node shutting down"
                self._touch_targets(hier.members)

    def _check_shutdown(self, now: float) -> None:
        if self._shutdown is not None and not self._shutdown_done and not self._flights:
            self._shutdown_done = True
            self._out.append(ShutdownCompleted(at=now))

    def _on_timer(self, _event: object, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, command_id = heapq.heappop(self._deadlines)
            flight = self._flights.get(command_id)
            if flight is None or flight.cancel is not None or flight.deadline != deadline:
                continue
            command = flight.command
            reason = f"{command.action.value} timed out after {command.timeout:g} s"
            flight.cancel = (reason, True)
            self._out.append(
                ActionTimedOut(
                    at=now, tag=command.tag, action=command.action, timeout=command.timeout
                )
            )
            self._out.append(CancelAction(command_id, reason))
        while self._checks and self._checks[0][0] <= now:
            due, _, tag = heapq.heappop(self._checks)
            res = self._res[tag]
            if res.check_due != due:
                continue  # superseded
            res.check_due = None
            if res.phase is Phase.IN and res.busy is None and self._shutdown is None:
                self._run(res, Step.CHECK, now)

    # -----------------------------------------------------------------------------------------
    # Results

    def _finished(self, command_id: int, result: Result, now: float) -> None:
        flight = self._flights.pop(command_id)
        res = self._res[flight.command.tag]
        res.busy = None
        self._refresh(res)
        self._to_decide[res.tag] = None
        if flight.cancel is not None:
            reason, counts = flight.cancel
            if not counts:
                # Cancelled for shutdown: what it found no longer matters.
                return
            result = Result.soft_failure(reason)
        if flight.step in (Step.PROBE, Step.CHECK):
            res.last_check, res.last_check_at = result, now
        if flight.step is Step.PROBE:
            self._unprobed -= 1
        effect = TRANSITIONS[(flight.step, result.outcome)]
        self._apply_effect(res, flight.step, effect, result, now)
        if flight.step is Step.PROBE and self._unprobed == 0:
            self._out.append(ProbingCompleted(at=now))
        if res.phase is Phase.IN and res.busy is None:
            self._schedule_check(res, now)

    def _apply_effect(
        self, res: _Res, step: Step, effect: Effect, result: Result, now: float
    ) -> None:
        reason = result.reason
        if effect is Effect.UP:
            self._went_up(res, step, result, now)
        elif effect is Effect.DOWN:
            self._went_down(res, step, result, now)
        elif effect in (Effect.FOUND_BROKEN, Effect.FOUND_BROKEN_HARD):
            res.fail_reason = f"probe found it broken: {result}"
            res.blocked = effect is Effect.FOUND_BROKEN_HARD
            self._set_phase(res, Phase.DIRTY, now, f"{res.fail_reason}; cleaning up")
            self._touch_targets((res.tag,))
        elif effect is Effect.FOUND_FATAL:
            res.blocked = True
            res.fail_reason = f"configuration error: {reason}"
            self._set_phase(res, Phase.OUT, now, res.fail_reason, State.OSF)
            self._out.append(ResourceFailed(at=now, tag=res.tag, reason=reason, fatal=True))
            self._touch_targets((res.tag,))
        elif effect is Effect.FAILED:
            self._monitor_failed(res, result, now)
        elif effect in (Effect.ESCALATE, Effect.ESCALATE_FATAL):
            what = "recover failed" if step is Step.RECOVER else "quickcheck failed"
            self._escalate(res, f"{what}: {result}", now, fatal=effect is Effect.ESCALATE_FATAL)
        elif effect in (Effect.RESTORE_FAILED, Effect.RESTORE_FAILED_HARD, Effect.RESTORE_FATAL):
            self._restore_failed(res, result, effect, now)
        else:
            self._remove_failed(res, result, now)

    def _went_up(self, res: _Res, step: Step, result: Result, now: float) -> None:
        degraded = result.outcome is Outcome.DEGRADED
        state = State.ISU if degraded else State.ISP
        if step is Step.PROBE:
            text = "found running; adopted"
        elif step is Step.RESTORE:
            text = "restored"
            for root in res.roots:
                if self._hier[root].desired:
                    self._hier[root].attempt.add(res.tag)
        elif step is Step.RECOVER:
            text = "recovered locally"
            self._out.append(ResourceRecovered(at=now, tag=res.tag))
        else:
            text = "quickcheck ok" if not degraded else "quickcheck degraded"
            if res.state is State.ISP and not degraded:
                text = res.reason  # nothing new to say
        if degraded:
            text = f"degraded: {result.reason}" if result.reason else "degraded"
        elif result.reason and step is not Step.CHECK:
            text = f"{text}: {result.reason}"
        res.fail_reason = None
        if step is not Step.CHECK:
            res.out_reason = None  # a new stay in service: why it last went out is history
        self._set_phase(res, Phase.IN, now, text, state)

    def _went_down(self, res: _Res, step: Step, result: Result, now: float) -> None:
        if res.fail_reason is not None:
            state, text = State.OSF, res.fail_reason
        elif step is Step.PROBE:
            state, text = State.OSU, "not running"
        else:
            state, text = State.OSU, res.out_reason or "taken out of service"
        if step is Step.REMOVE and result.outcome is Outcome.DEGRADED and result.reason:
            text = f"{text} (remove: {result.reason})"
        self._set_phase(res, Phase.OUT, now, text, state)

    def _monitor_failed(self, res: _Res, result: Result, now: float) -> None:
        self._out.append(QuickcheckFailed(at=now, tag=res.tag, result=result))
        policy = res.policy
        if not res.stay:
            # Already on its way out (a request, a failure above or below it, a take-out
            # shutdown): recovering it, or failing hierarchies over it, would be pointless.
            res.fail_reason = f"quickcheck failed: {result}"
            self._set_phase(res, Phase.DIRTY, now, f"{res.fail_reason}; taking out of service")
            return
        if self._shutdown is not None:
            # Shutting down and leaving things running: nothing more is started.
            self._set_phase(
                res,
                Phase.IN,
                now,
                f"quickcheck failed: {result}; node shutting down, not recovering",
                State.ISU,
            )
            return
        if not policy.local_recovery:
            self._escalate(res, f"quickcheck failed: {result} (local recovery disabled)", now)
            return
        recent = self._recent_recoveries(res, now)
        limit = policy.recovery_limit
        if recent >= limit.max_recoveries:
            self._out.append(
                RecoveryLimitReached(
                    at=now,
                    tag=res.tag,
                    max_recoveries=limit.max_recoveries,
                    window=limit.window,
                )
            )
            self._escalate(
                res,
                f"quickcheck failed: {result}; recovery limit reached "
                f"({limit.max_recoveries} "
                f"{'recovery' if limit.max_recoveries == 1 else 'recoveries'} "
                f"within {limit.window:g} s)",
                now,
            )
            return
        res.recoveries.append(now)
        reason = f"recovering: {result}"
        self._out.append(RecoveryStarted(at=now, tag=res.tag, attempt=recent + 1, reason=reason))
        self._set_phase(res, Phase.IN, now, reason, State.ISU)
        self._run(res, Step.RECOVER, now)

    def _recent_recoveries(self, res: _Res, now: float) -> int:
        window_start = now - res.policy.recovery_limit.window
        while res.recoveries and res.recoveries[0] <= window_start:
            res.recoveries.popleft()
        return len(res.recoveries)

    def _wanted(self, hier: _Hier) -> bool:
        """Whether the hierarchy is meant to run here: requested in, or adopted as found."""
        if hier.failed is not None:
            return False
        if hier.desired is None:
            return self._res[hier.root].phase is Phase.IN
        return hier.desired

    def _escalate(self, res: _Res, reason: str, now: float, *, fatal: bool = False) -> None:
        # Decide which hierarchies fail before the resource changes phase: "adopted as found"
        # reads the root's phase, and the resource may be the root.
        failing = [root for root in res.roots if self._wanted(self._hier[root])]
        res.fail_reason = reason
        # Blocked until a request retries it: neither another hierarchy's demand nor a
        # retained rollback may bring it straight back, which would loop restore and failure.
        res.blocked = True
        self._set_phase(res, Phase.DIRTY, now, f"failed: {reason}; taking out of service")
        self._out.append(ResourceFailed(at=now, tag=res.tag, reason=reason, fatal=fatal))
        self._mark_dependants(res, f"taken out of service: {res.tag} failed")
        if res.policy.failover:
            for root in failing:
                self._fail_hierarchy(root, res, reason, now, failover=not fatal, keep=frozenset())
        self._touch_targets((res.tag,))

    def _mark_dependants(self, res: _Res, reason: str) -> None:
        """Say why everything above ``res`` goes out (iteratively: chains may be deep)."""
        seen = {res.tag}
        stack = list(res.parents)
        while stack:
            tag = stack.pop()
            if tag in seen:
                continue
            seen.add(tag)
            parent = self._res[tag]
            parent.out_reason = reason
            stack.extend(parent.parents)

    def _restore_failed(self, res: _Res, result: Result, effect: Effect, now: float) -> None:
        reason = f"restore failed: {result}"
        res.fail_reason = reason
        fatal = effect is Effect.RESTORE_FATAL
        # Blocked, for the same reason as an escalated failure: a hierarchy that keeps running
        # parts of itself after a failed attempt must not restore this one again and again.
        res.blocked = True
        self._set_phase(res, Phase.DIRTY, now, f"{reason}; cleaning up")
        self._out.append(ResourceFailed(at=now, tag=res.tag, reason=reason, fatal=fatal))
        self._mark_dependants(res, f"taken out of service: {res.tag} failed")
        for root in res.roots:
            hier = self._hier[root]
            if not hier.desired or hier.failed is not None:
                continue
            running = {tag for tag in hier.members if self._res[tag].phase is Phase.IN}
            if self._model.hierarchies[root].rollback:
                # What this attempt brought up, or was still bringing up, goes out again.
                keep = running - hier.attempt
            else:
                keep = running | {
                    tag
                    for tag in hier.members
                    if (busy := self._res[tag].busy) is not None and busy.step is Step.RESTORE
                }
            self._fail_hierarchy(
                root,
                res,
                reason,
                now,
                failover=not fatal and res.policy.failover,
                keep=frozenset(keep),
            )
        self._touch_targets((res.tag,))

    def _fail_hierarchy(
        self,
        root: str,
        cause: _Res,
        reason: str,
        now: float,
        *,
        failover: bool,
        keep: frozenset[str],
    ) -> None:
        hier = self._hier[root]
        if hier.failed is not None:
            return
        hier.failed = f"{cause.tag}: {reason}"
        hier.retained = keep
        for tag in hier.members:
            if tag != cause.tag and tag not in keep:
                self._res[tag].out_reason = f"taken out of service: {cause.tag} failed"
        self._out.append(
            HierarchyFailed(
                at=now, root=root, cause=cause.tag, reason=reason, failover_needed=failover
            )
        )
        self._touch_targets(hier.members)

    def _remove_failed(self, res: _Res, result: Result, now: float) -> None:
        res.fencing = True
        reason = f"remove failed: {result}; may still be in service, fencing required"
        self._set_phase(res, Phase.STUCK, now, reason)
        self._out.append(FencingRequired(at=now, tag=res.tag, roots=res.roots, reason=reason))

    # -----------------------------------------------------------------------------------------
    # State and scheduling

    def _set_phase(
        self, res: _Res, phase: Phase, now: float, reason: str, state: State | None = None
    ) -> None:
        old_phase, old_state = res.phase, res.state
        new_state = state if state is not None else _PHASE_STATE[phase]
        res.phase = phase
        if phase is not Phase.IN:
            res.check_due = None
        if (old_state, res.reason) != (new_state, reason):
            res.state, res.reason = new_state, reason
            self._out.append(
                StateChanged(at=now, tag=res.tag, old=old_state, new=new_state, reason=reason)
            )
        if old_phase is phase:
            return
        self._to_decide[res.tag] = None
        self._refresh(res)
        was_out = old_phase is Phase.OUT
        if was_out != (phase is Phase.OUT):
            step = -1 if phase is Phase.OUT else 1
            for root in res.roots:
                self._not_out[root] += step
                if self._not_out[root] == 0:
                    self._out.append(HierarchyOutOfService(at=now, root=root))
        if phase is Phase.IN and res.tag in self._hier:
            self._out.append(HierarchyInService(at=now, root=res.tag))

    def _refresh(self, res: _Res) -> None:
        """Re-derive the flags neighbours count after ``res`` changed phase, busy or stay.

        Each change updates the neighbours' counts and queues them to decide again (or, for
        ``ok``, to recompute ``stay``), so no neighbour ever rescans its whole list.
        """
        phase, busy = res.phase, res.busy
        up = phase is Phase.IN and res.stay and (busy is None or busy.step is not Step.REMOVE)
        down = phase is Phase.OUT and busy is None
        ok = res.stay and (phase is Phase.IN or phase is Phase.UNPROBED)
        if up is not res.up:
            res.up = up
            self._count(res.parents, "n_up", up)
            self._to_decide.update(dict.fromkeys(res.parents))
        if down is not res.down:
            res.down = down
            self._count(res.children, "n_down", down)
            self._to_decide.update(dict.fromkeys(res.children))
        if ok is not res.ok:
            res.ok = ok
            self._count(res.parents, "n_ok", ok)
            self._touch_targets(res.parents)

    def _count(self, tags: tuple[str, ...], counter: str, flag: bool) -> None:
        """Add one to (``flag``) or take one from each of ``tags``' ``counter``."""
        delta = 1 if flag else -1
        for tag in tags:
            neighbour = self._res[tag]
            setattr(neighbour, counter, getattr(neighbour, counter) + delta)

    def _run(self, res: _Res, step: Step, now: float) -> None:
        action = _STEP_ACTION[step]
        fenced = step is Step.REMOVE and any(self._hier[root].fenced for root in res.roots)
        command = RunAction(
            command_id=self._next_id,
            tag=res.tag,
            kind=res.kind,
            action=action,
            timeout=res.policy.timeouts.for_action(action),
            fenced=fenced,
            probe=step is Step.PROBE,
        )
        self._next_id += 1
        flight = _Flight(command, step, now + command.timeout)
        res.busy = flight
        res.check_due = None
        self._refresh(res)
        self._flights[command.command_id] = flight
        heapq.heappush(self._deadlines, (flight.deadline, command.command_id))
        self._out.append(command)

    def _schedule_check(self, res: _Res, now: float) -> None:
        if self._shutdown is not None:
            return
        interval = res.policy.quickcheck_interval
        # A stable phase per (kind, interval): same-kind checks fall due together and batch.
        offset = (zlib.crc32(f"{res.kind}/{interval!r}".encode()) % 1000) / 1000 * interval
        due = offset + interval * (math.floor((now - offset) / interval) + 1)
        if due <= now:
            due += interval  # rounding put the grid point on or before now
        res.check_due = due
        self._check_seq += 1
        heapq.heappush(self._checks, (due, self._check_seq, res.tag))

    def _drop_stale(self) -> None:
        while self._deadlines and (
            (flight := self._flights.get(self._deadlines[0][1])) is None
            or flight.cancel is not None
            or flight.deadline != self._deadlines[0][0]
        ):
            heapq.heappop(self._deadlines)
        while self._checks and self._res[self._checks[0][2]].check_due != self._checks[0][0]:
            heapq.heappop(self._checks)

    # -----------------------------------------------------------------------------------------
    # Reconciliation

    def _touch_targets(self, tags: Iterable[str]) -> None:
        for tag in tags:
            if tag not in self._queued:
                self._queued.add(tag)
                self._target_queue.append(tag)

    def _demand(self, res: _Res) -> int:
        """``_IN``, ``_AS_FOUND`` or ``_OUT``: the strongest demand of its hierarchies."""
        if res.blocked:
            return _OUT
        demand = _OUT
        for root in res.roots:
            hier = self._hier[root]
            if hier.failed is not None:
                if hier.desired and res.tag in hier.retained:
                    return _IN
            elif hier.desired:
                return _IN
            elif hier.desired is None:
                demand = _AS_FOUND
        return demand

    def _settle(self, now: float) -> None:
        queue, queued, resources = self._target_queue, self._queued, self._res
        while queue or self._to_decide:
            while queue:
                tag = queue.popleft()
                queued.discard(tag)
                res = resources[tag]
                demand = self._demand(res)
                width = len(res.children)
                target = demand == _IN and res.n_target == width
                stay = demand != _OUT and res.n_ok == width
                self._to_decide[tag] = None
                if target is not res.target:
                    res.target = target
                    self._count(res.parents, "n_target", target)
                    self._touch_targets(res.parents)
                if stay is not res.stay:
                    res.stay = stay
                    self._refresh(res)
            # Decisions only start actions: they change no target, stay or phase, so they
            # never feed the first pass; the outer loop is a guard, not a second round.
            pending = sorted(self._to_decide, key=self._position.__getitem__)
            self._to_decide = {}
            for tag in pending:
                self._decide(resources[tag], now)

    def _decide(self, res: _Res, now: float) -> None:
        if res.busy is not None:
            return
        if self._shutdown is False:
            return  # leaving everything running: no new actions
        phase = res.phase
        if phase is Phase.OUT:
            if res.target and self._shutdown is None and res.n_up == len(res.children):
                res.fail_reason = None
                self._set_phase(res, Phase.OUT, now, "restoring", res.state)
                self._run(res, Step.RESTORE, now)
        elif ((phase is Phase.IN and not res.stay) or phase is Phase.DIRTY) and res.n_down == len(
            res.parents
        ):
            if res.out_reason is None and phase is Phase.IN:
                res.out_reason = self._why_out(res)
            self._run(res, Step.REMOVE, now)

    def _why_out(self, res: _Res) -> str:
        """Why an in-service resource nobody explicitly took out is being removed."""
        for tag in res.children:
            if not self._res[tag].ok:
                return f"taken out of service: {tag!r}, which it depends on, is not in service"
        return "taken out of service"
