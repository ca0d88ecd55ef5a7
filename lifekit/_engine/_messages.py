"""The engine's vocabulary: events it takes in, commands and notifications it gives out.

Events (past tense) are facts the runtime reports; commands (imperative) are what the runtime
must do; notifications (past tense) are what integrators see on the node's event stream. All are
frozen, and every one the engine emits carries ``at``, the time the engine was given.
"""

from __future__ import annotations

import attrs

from lifekit._model import Action, Result, State

__all__ = [
    "ActionFinished",
    "ActionHeld",
    "ActionStarted",
    "ActionTimedOut",
    "CancelAction",
    "Command",
    "Event",
    "FencingRequired",
    "HierarchyFailed",
    "HierarchyInService",
    "HierarchyOutOfService",
    "InServiceRequested",
    "NodeStarted",
    "Notification",
    "OutOfServiceRequested",
    "Output",
    "ProbingCompleted",
    "QuickcheckFailed",
    "RecoveryLimitReached",
    "RecoveryStarted",
    "ResourceFailed",
    "ResourceRecovered",
    "RunAction",
    "ShutdownCompleted",
    "ShutdownRequested",
    "StateChanged",
]

# ---------------------------------------------------------------------------------------------
# Events in


@attrs.frozen
class NodeStarted:
    """The runtime is ready: probe every resource to learn its real state."""


@attrs.frozen
class InServiceRequested:
    """Bring the hierarchy named by ``root`` in service on this node.

    Also clears a previous failure of the hierarchy (an explicit request is a retry).
    """

    root: str


@attrs.frozen
class OutOfServiceRequested:
    """Take the hierarchy named by ``root`` out of service on this node.

    :param fenced: this node lost the right to touch shared storage: use the kits' fenced
        remove (no I/O to the storage).
    """

    root: str
    fenced: bool = False


@attrs.frozen
class ActionFinished:
    """The runtime finished running a :class:`RunAction` (or its cancellation took effect)."""

    command_id: int
    result: Result


@attrs.frozen
class ActionHeld:
    """The runtime could not start a :class:`RunAction` yet (too many are running).

    Its timeout does not run until :class:`ActionStarted`: waiting for a slot is not the
    kit's slowness. Optional: an action never held is timed from when the engine issued it.
    """

    command_id: int


@attrs.frozen
class ActionStarted:
    """The runtime started a :class:`RunAction` it had held: its timeout counts from now."""

    command_id: int


@attrs.frozen
class ShutdownRequested:
    """Stop monitoring; with ``take_out``, take every hierarchy out of service first.

    After it, requests and :class:`NodeStarted` are refused; :class:`ShutdownCompleted` follows
    once no action is in flight.
    """

    take_out: bool = True


Event = (
    NodeStarted
    | InServiceRequested
    | OutOfServiceRequested
    | ActionHeld
    | ActionStarted
    | ActionFinished
    | ShutdownRequested
)

# ---------------------------------------------------------------------------------------------
# Commands out


@attrs.frozen
class RunAction:
    """Run one kit action on one resource and report :class:`ActionFinished`.

    :param command_id: unique per engine; the result must quote it.
    :param timeout: the engine cancels the action (:class:`CancelAction`) at this many seconds.
    :param fenced: for a remove, use the kit's fenced variant.
    :param probe: a quickcheck that learns the state of a resource not yet known.
    """

    command_id: int
    tag: str
    kind: str
    action: Action
    timeout: float
    fenced: bool = False
    probe: bool = False


@attrs.frozen
class CancelAction:
    """Cancel a running action now; then still report its :class:`ActionFinished`.

    The resource stays busy until that report arrives: the engine starts nothing else on it.
    """

    command_id: int
    reason: str


Command = RunAction | CancelAction

# ---------------------------------------------------------------------------------------------
# Notifications out


@attrs.frozen
class StateChanged:
    """A resource's state or reason changed."""

    at: float
    tag: str
    old: State
    new: State
    reason: str


@attrs.frozen
class QuickcheckFailed:
    """A quickcheck of a resource in service failed."""

    at: float
    tag: str
    result: Result


@attrs.frozen
class RecoveryStarted:
    """Local recovery of a resource began (``attempt`` counts within the recovery window)."""

    at: float
    tag: str
    attempt: int
    reason: str


@attrs.frozen
class ResourceRecovered:
    """Local recovery brought a resource back in service."""

    at: float
    tag: str


@attrs.frozen
class RecoveryLimitReached:
    """A failure came after ``max_recoveries`` recoveries within ``window`` s: no recover."""

    at: float
    tag: str
    max_recoveries: int
    window: float


@attrs.frozen
class ActionTimedOut:
    """An action ran past its timeout; it is being cancelled and counts as a failure."""

    at: float
    tag: str
    action: Action
    timeout: float


@attrs.frozen
class ResourceFailed:
    """A resource failed beyond what local recovery could fix, or failed to restore.

    It is taken out of service (with everything that depends on it) and not started again on
    this node until a request for one of its hierarchies retries it.

    :param fatal: a configuration error: it will not be retried anywhere; alert the operator.
    """

    at: float
    tag: str
    reason: str
    fatal: bool = False


@attrs.frozen
class HierarchyFailed:
    """A hierarchy could not be kept (or brought) in service on this node.

    This is the escalation the cluster layer consumes. Alone on one node, the hierarchy ends
    out of service (its failed resource OSF) with ``reason``. Only hierarchies wanted on this
    node fail: requested in service, or left as found with their root running.

    :param cause: the tag of the resource whose failure escalated.
    :param failover_needed: another node should take the hierarchy over (``False`` for a
        fatal configuration error, and for a failed restore of a resource whose policy has
        failover off; an escalated failure of such a resource fails no hierarchy at all).
    """

    at: float
    root: str
    cause: str
    reason: str
    failover_needed: bool


@attrs.frozen
class FencingRequired:
    """A remove failed: the resource may still be in service here.

    No other node may take the hierarchies in ``roots`` over until this node is fenced or an
    operator confirms it is down.
    """

    at: float
    tag: str
    roots: tuple[str, ...]
    reason: str


@attrs.frozen
class HierarchyInService:
    """The hierarchy's root came in service on this node."""

    at: float
    root: str


@attrs.frozen
class HierarchyOutOfService:
    """Every resource of the hierarchy is out of service on this node."""

    at: float
    root: str


@attrs.frozen
class ProbingCompleted:
    """Every resource was probed once: its state is known."""

    at: float


@attrs.frozen
class ShutdownCompleted:
    """After a :class:`ShutdownRequested`: nothing is running and nothing more will be done."""

    at: float


Notification = (
    StateChanged
    | QuickcheckFailed
    | RecoveryStarted
    | ResourceRecovered
    | RecoveryLimitReached
    | ActionTimedOut
    | ResourceFailed
    | HierarchyFailed
    | FencingRequired
    | HierarchyInService
    | HierarchyOutOfService
    | ProbingCompleted
    | ShutdownCompleted
)

Output = Command | Notification
