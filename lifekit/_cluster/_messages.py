"""The cluster core's vocabulary: the report nodes exchange, events in, commands and notices out.

:class:`PeerReport` is what every heartbeat carries (the wire module signs and encodes it; this
module only says what it means). Events are facts the runtime reports; commands are what the
runtime must do for this node; notifications are for the node's event stream. All are frozen.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = [
    "BringInService",
    "ClusterCommand",
    "ClusterEvent",
    "ClusterNotification",
    "ClusterOutput",
    "Echo",
    "FailureMarksCleared",
    "FeedWatchdog",
    "FenceConfirmed",
    "HeartbeatReceived",
    "HierarchyEscalated",
    "HierarchyReport",
    "LocalHierarchyChanged",
    "LocalPhase",
    "MaintenanceChanged",
    "NodeAlive",
    "NodeDead",
    "PathDown",
    "PathUp",
    "PeerOutOfServiceEvidence",
    "PeerReport",
    "QuorumGained",
    "QuorumLost",
    "RequestWitnessVote",
    "SendHeartbeat",
    "StopFeedingWatchdog",
    "StorageReservationHeld",
    "StorageReservationLost",
    "TakeOutOfService",
    "TakeoverBlocked",
    "UnsafeQuorumMode",
    "Vote",
    "WitnessVoteGranted",
    "WitnessVoteRefused",
]


def _frozen_map(value: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(value))


class LocalPhase(enum.Enum):
    """Where one hierarchy stands on one node. The values are a wire and monitoring contract.

    Everything but ``OUT`` counts as *possibly in service*: no other node may bring the
    hierarchy in while a node reports it so.
    """

    OUT = "out"
    STARTING = "starting"
    IN = "in"
    STOPPING = "stopping"
    #: A remove failed: it may still be in service until the node is fenced.
    STUCK = "stuck"


@attrs.frozen
class Vote:
    """A node's vote for who may run a hierarchy: one claim of one node's incarnation."""

    node: str
    incarnation: int
    claim: int


@attrs.frozen
class Echo:
    """The newest heartbeat a node received from a peer: the peer's incarnation and send time.

    The peer reads it back as proof that this node heard it (two-way contact); the time is the
    peer's own clock, so no clocks are ever compared across nodes.
    """

    incarnation: int
    sent_at: float


@attrs.frozen
class HierarchyReport:
    """One hierarchy as its sender sees it on itself.

    :param phase: its local phase on the sender.
    :param claim: the sender's live claim to run it, if any (ids never repeat in an
        incarnation).
    :param failed: the sender is marked failed for it (local recovery gave up there).
    :param vote: whom the sender votes may run it.
    """

    phase: LocalPhase = LocalPhase.OUT
    claim: int | None = None
    failed: bool = False
    vote: Vote | None = None


@attrs.frozen
class PeerReport:
    """The state a node sends in every heartbeat.

    :param node: the sender.
    :param incarnation: grows every time the sender's daemon starts (the runtime persists it).
    :param seq: grows with every report within one incarnation; older ones are ignored.
    :param sent_at: the sender's clock when it sent this report.
    :param quorate: whether the sender is quorate.
    :param maintenance: the sender is in maintenance mode (no hierarchy is placed on it).
    :param echoes: per peer, the newest heartbeat of that peer the sender has received.
    :param silence: per peer, seconds (sender's clock) since the sender last received anything
        from it (since the sender started, if never).
    :param hierarchies: per hierarchy root, the sender's view of itself.
    :param external: while the sender holds the external vote (witness or reservation):
        seconds it has held it without a break, and seconds it stays valid, both from
        ``sent_at`` (sender's clock). Peers use it to know nobody else could count that vote.
    """

    node: str
    incarnation: int
    seq: int
    sent_at: float
    quorate: bool
    maintenance: bool = False
    echoes: Mapping[str, Echo] = attrs.field(factory=dict, converter=_frozen_map)
    silence: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_map)
    hierarchies: Mapping[str, HierarchyReport] = attrs.field(factory=dict, converter=_frozen_map)
    external: tuple[float, float] | None = None


# ---------------------------------------------------------------------------------------------
# Events in


@attrs.frozen
class HeartbeatReceived:
    """An authenticated heartbeat from ``node`` arrived on ``path``."""

    node: str
    path: str
    report: PeerReport


@attrs.frozen
class LocalHierarchyChanged:
    """The local resource engine says where a hierarchy now stands on this node."""

    root: str
    phase: LocalPhase


@attrs.frozen
class HierarchyEscalated:
    """Local recovery gave up on a hierarchy here (the resource engine's ``HierarchyFailed``).

    With ``failover_needed`` this node marks itself failed for it, so placement moves it away;
    the resource engine takes it out here.
    """

    root: str
    failover_needed: bool = True


@attrs.frozen
class FailureMarksCleared:
    """The operator cleared this node's failure marks (``lifekit cleanup``): all, or one root."""

    root: str | None = None


@attrs.frozen
class MaintenanceChanged:
    """This node entered or left maintenance mode."""

    on: bool


@attrs.frozen
class FenceConfirmed:
    """``node`` was fenced, or an operator confirmed it is down (``lifekit fence confirm``).

    Everything its current incarnation had is taken as out of service; its reports from that
    incarnation are ignored from now on. It rejoins when it restarts.
    """

    node: str


@attrs.frozen
class PeerOutOfServiceEvidence:
    """Direct, durable evidence that ``node`` no longer has ``root`` in service.

    For example no host answers for the hierarchy's address any more, or its reservation was
    preempted at the target. It must stay true until that node restarts: the runtime only
    reports it when the node cannot bring the hierarchy back. It lets the hierarchy move once
    the node has been silent for the deadtime, without waiting out its watchdog.
    """

    node: str
    root: str


@attrs.frozen
class WitnessVoteGranted:
    """The witness granted this node its vote for ``valid_for`` s (witness's clock).

    :param requested_at: the ``requested_at`` of the :class:`RequestWitnessVote` it answers.
    """

    requested_at: float
    valid_for: float


@attrs.frozen
class WitnessVoteRefused:
    """The witness refused: another node holds its vote."""

    requested_at: float


@attrs.frozen
class StorageReservationHeld:
    """The storage hook checked at ``checked_at`` that this node holds the reservation.

    The vote is valid for ``valid_for`` s from then. The hook must never let another node take
    the reservation before this validity (stretched by the clock margin) has passed.
    """

    checked_at: float
    valid_for: float


@attrs.frozen
class StorageReservationLost:
    """The storage hook found that this node no longer holds the reservation."""


ClusterEvent = (
    HeartbeatReceived
    | LocalHierarchyChanged
    | HierarchyEscalated
    | FailureMarksCleared
    | MaintenanceChanged
    | FenceConfirmed
    | PeerOutOfServiceEvidence
    | WitnessVoteGranted
    | WitnessVoteRefused
    | StorageReservationHeld
    | StorageReservationLost
)

# ---------------------------------------------------------------------------------------------
# Commands out


@attrs.frozen
class SendHeartbeat:
    """Send ``report`` to every peer on every path."""

    report: PeerReport


@attrs.frozen
class BringInService:
    """Bring the hierarchy in service on this node (the resource engine's request)."""

    root: str


@attrs.frozen
class TakeOutOfService:
    """Take the hierarchy out of service on this node."""

    root: str
    reason: str


@attrs.frozen
class FeedWatchdog:
    """Feed the watchdog now. Feed it only when told: each feed is a safety decision."""


@attrs.frozen
class StopFeedingWatchdog:
    """This node may no longer serve: stop feeding; the watchdog resets it ``W`` from the last
    feed unless everything it had is out of service by then and feeding resumes."""

    reason: str


@attrs.frozen
class RequestWitnessVote:
    """Ask the witness for its vote; answer with :class:`WitnessVoteGranted` or ``...Refused``.

    :param requested_at: this node's clock now; quote it in the answer.
    """

    requested_at: float


ClusterCommand = (
    SendHeartbeat
    | BringInService
    | TakeOutOfService
    | FeedWatchdog
    | StopFeedingWatchdog
    | RequestWitnessVote
)

# ---------------------------------------------------------------------------------------------
# Notifications out


@attrs.frozen
class PathDown:
    """No heartbeat from ``node`` on ``path`` for the deadtime. A warning while other paths live."""

    at: float
    node: str
    path: str


@attrs.frozen
class PathUp:
    """Heartbeats from ``node`` arrive on ``path`` (again)."""

    at: float
    node: str
    path: str


@attrs.frozen
class NodeDead:
    """Every path to ``node`` is down."""

    at: float
    node: str


@attrs.frozen
class NodeAlive:
    """``node`` is heard again on at least one path."""

    at: float
    node: str


@attrs.frozen
class QuorumGained:
    """This node is quorate: it may serve."""

    at: float
    votes: int
    needed: int


@attrs.frozen
class QuorumLost:
    """This node lost quorum: it takes everything out of service and stops feeding the
    watchdog."""

    at: float
    reason: str


@attrs.frozen
class TakeoverBlocked:
    """``root`` cannot move: ``node`` may still run it and nothing proves otherwise.

    For a failed remove, fence the node or confirm it is down (:class:`FenceConfirmed`).
    """

    at: float
    root: str
    node: str
    reason: str


@attrs.frozen
class UnsafeQuorumMode:
    """Quorum mode ``none``: a partition may put a hierarchy in service on two nodes."""

    at: float


ClusterNotification = (
    PathDown
    | PathUp
    | NodeDead
    | NodeAlive
    | QuorumGained
    | QuorumLost
    | TakeoverBlocked
    | UnsafeQuorumMode
)

ClusterOutput = ClusterCommand | ClusterNotification
