"""The cluster engine: one node's pure, deterministic safety core.

Theory of operation
===================

:class:`ClusterEngine` runs on every node beside the resource engine. Like it, it does no I/O
and reads no clock: the runtime passes ``now`` (this node's monotonic clock) into every call,
carries out the commands it returns (send a heartbeat, bring a hierarchy in or out of service,
feed the watchdog, ask the witness) and calls :meth:`ClusterEngine.handle_timer` at
:meth:`ClusterEngine.next_deadline`. Bad input raises :class:`EngineUsageError` before any change;
an internal error poisons the engine (:class:`EngineFailed`), and the runtime must then stop
feeding the watchdog.

Heartbeats. Every ``heartbeat_interval`` (and at once when its state changes) a node sends a
:class:`PeerReport` on every path: its incarnation and sequence number, its send time, whether it
is quorate, per peer the newest heartbeat it got from that peer (*echo*, in the peer's clock) and
how long it has not heard it (*silence*, in its own clock), and per hierarchy its local phase,
its claim and its vote. Only the newest report of each peer counts.

Quorum. There are ``total`` votes: one per node, plus one external vote in witness and storage
modes. A peer's vote counts for node X while the peer's newest report echoes a heartbeat X sent
within the deadtime ``D`` (X's clock): two-way contact, judged on X's clock alone. The external
vote counts while X holds the witness's lease (or the storage reservation). X is *quorate* while
strictly more than ``total / 2`` votes count, itself included; that is a lease, and X checks its
expiry before every input, so a quorum that lapsed while X was not running is noticed as lost
even if fresh heartbeats wait in the queue.

Claims and votes. To run hierarchy H, X makes a *claim* (a number never reused in its
incarnation) and needs the votes of a majority for exactly that claim. Each node votes, per
hierarchy, for one claim: that of the node placement names (:func:`place`). A vote is sticky:
it moves from a claim of node Y to one of another node only when Y's run of H under it is over:

1. Y's newest report shows that claim gone (claims never come back) and H out of service, or
2. ``t*`` (below) exists with ``t* >=`` the time the voter set its vote to that claim (so
   the claim existed before ``t*``), and ``stretch * W`` has passed since (*the safety
   wait*), or
3. Y has been silent for ``D`` and the runtime gave :class:`PeerOutOfServiceEvidence`, or
4. :class:`FenceConfirmed` for Y.

After a (re)start a node does not know whom it voted for: its vote moves to node Z only when
every other node has echoed its new incarnation with H out of service, or is covered by 2-4.

``t*`` for peer P, computed by the voter S in S's clock from silence intervals during which P
could not count one vote: S's own (from ``last heard P + stretch*D`` to now), each peer Y's
(from ``received - silence/stretch + stretch*D`` to the time of S's heartbeat that Y's report
echoes), and the external vote's while S, or a peer by its report, held it. ``t*`` is the
earliest time at which a majority of votes other than P's own are silent for P.

A node runs H only under a claim with a majority; its claims die when its quorum lapses (or,
for a claim that needed the external vote, when that lease lapses; such a claim counts the
external vote only after it was held for ``stretch * W``), and then it takes H out. It feeds
its watchdog only while everything it has in service is under a live claim with a majority
(with nothing in service, feeding is harmless: there is nothing a reset would take out).
Mode ``none`` has no votes, no claims and no watchdog: a node takes a hierarchy when no peer
it hears has it, so after the deadtime (unsafe; it warns).

Why no hierarchy is ever in service on two nodes (proof sketch)
---------------------------------------------------------------
Clocks: any two run at rates within a factor ``stretch = 1 + clock_margin``.

(a) *Out-proof.* If at ``t*`` a majority of votes other than P's are silent for P, P was not
quorate at ``t*``: each node vote needs an echo of a P heartbeat sent within ``D`` of P's clock
(at most ``stretch*D`` of S's), received by that voter in its silent interval, where it
received nothing; the external vote was S's. So P's lease lapsed by ``t*``: every claim P made
before ``t*`` is dead, and P fed its watchdog after ``t*`` only with everything under newer
claims. Whatever P ran under an older claim is out by ``t* + W`` of P's watchdog
(``stretch*W`` of S's), whether P's daemon kept running or hung.
(b) *Votes.* Each voter's vote names one claim at a time and leaves a claim of Y only by 1-4,
each of which means Y's run of H under that claim (and any earlier one it voted for) is over:
(1) claims never revive and the report shows H out; (2) by (a), since that claim existed before
the vote was set; (3) and (4) by the runtime's word. A node uses only votes naming its
current claim, so stale votes in delayed reports never count.
(c) *Intersection.* Suppose X and Z ran H at the same time under claims with majorities. Two
majorities share a voter. If it is a node, its vote moved from one claim to the other in
between, which (b) forbids while the first run went on. If the only shared voter is the external
vote, Z's holding began after X's ended (the grantor is exclusive and the holder stops counting
it early); X's claim that needed it died then, X's run was out ``stretch*W`` later, and Z
counted the vote only after holding it that long.
So at every moment at most one node runs each hierarchy. The price: without evidence, a
hierarchy moves ``stretch * (D + W)`` after its holder was last heard (:meth:`ClusterConfig.
takeover_wait`), plus a heartbeat for the votes; with evidence, ``D`` plus a heartbeat.

Liveness. Once the network is healed and quiet, every node hears every other, every view agrees,
placement agrees, stale claims are dropped (a node drops its claim once placement names another
node and H is out), votes move to the placed node's claim, and it brings H in service. A hierarchy
stuck on a node whose remove failed stays blocked (:class:`TakeoverBlocked`) until
:class:`FenceConfirmed`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs

from lifekit._cluster._config import ClusterConfig, QuorumMode
from lifekit._cluster._membership import Membership, PeerStatus
from lifekit._cluster._messages import (
    BringInService,
    ClusterEvent,
    ClusterOutput,
    Echo,
    FailureMarksCleared,
    FeedWatchdog,
    FenceConfirmed,
    HeartbeatReceived,
    HierarchyEscalated,
    HierarchyReport,
    LocalHierarchyChanged,
    LocalPhase,
    MaintenanceChanged,
    PeerOutOfServiceEvidence,
    PeerReport,
    QuorumGained,
    QuorumLost,
    RequestWitnessVote,
    SendHeartbeat,
    StopFeedingWatchdog,
    StorageReservationHeld,
    StorageReservationLost,
    TakeOutOfService,
    TakeoverBlocked,
    UnsafeQuorumMode,
    Vote,
    WitnessVoteGranted,
    WitnessVoteRefused,
)
from lifekit._cluster._placement import place
from lifekit._cluster._quorum import (
    ExternalLease,
    Silence,
    lease_expiry,
    needed_votes,
    out_of_service_since,
)
from lifekit._model import Model
from lifekit.errors import EngineFailed, EngineUsageError

__all__ = ["ClusterEngine", "ClusterHierarchyStatus", "ClusterSnapshot"]

_T = TypeVar("_T")


@attrs.frozen
class ClusterHierarchyStatus:
    """One hierarchy as this node's cluster engine sees it."""

    root: str
    phase: LocalPhase
    claim: int | None
    #: Whether the claim has a majority of votes now.
    granted: bool
    vote: Vote | None
    #: Where placement puts it in this node's view (``None``: nowhere).
    placement: str | None
    failed: bool


@attrs.frozen
class ClusterSnapshot:
    """An immutable picture of one node's cluster engine."""

    at: float
    node: str
    incarnation: int
    quorate: bool
    votes: int
    needed: int
    feeding_watchdog: bool
    maintenance: bool
    peers: Mapping[str, PeerStatus]
    hierarchies: Mapping[str, ClusterHierarchyStatus]


class _Claim:
    __slots__ = ("bound", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        #: The external holding this claim needed to reach a majority, or ``None``.
        self.bound: float | None = None


_NOTHING_NEW = object()
_RUNNING = (LocalPhase.STARTING, LocalPhase.IN)


class ClusterEngine:
    """The safety core of node ``me``. See the module docstring for how it works.

    :param model: the hierarchies and their node lists (every node uses the same).
    :param config: the cluster settings.
    :param me: this node's name.
    :param incarnation: larger than at every earlier start of this node (the runtime persists
        it).
    :param now: this node's clock at start.
    :param failed: roots this node is marked failed for (persisted across restarts).
    """

    def __init__(
        self,
        model: Model,
        config: ClusterConfig,
        me: str,
        *,
        incarnation: int,
        now: float,
        failed: frozenset[str] = frozenset(),
    ) -> None:
        if isinstance(incarnation, bool) or not isinstance(incarnation, int) or incarnation < 0:
            raise EngineUsageError(
                f"incarnation must be a non-negative int, got {incarnation!r}; persist a counter "
                "and add one at every start"
            )
        _check_time(now)
        unknown = sorted(set(failed) - set(model.hierarchies))
        if unknown:
            raise EngineUsageError(f"failed marks for unknown hierarchies: {unknown}")
        self._model = model
        self._config = config
        self._me = me
        self._membership = Membership(config, me)
        self._inc = incarnation
        self._start = now
        self._now = now
        self._D = config.deadtime
        self._stretch = config.stretch
        self._needed = needed_votes(config.total_votes)
        self._roots = tuple(model.hierarchies)
        self._reports: dict[str, PeerReport] = {}
        self._received: dict[str, float] = {}
        self._fenced: dict[str, int] = {}
        self._evidence: dict[tuple[str, str], int] = {}
        self._phase = dict.fromkeys(self._roots, LocalPhase.OUT)
        self._failed = set(failed)
        self._maintenance = False
        self._claims: dict[str, _Claim] = {}
        self._next_claim = 1
        self._vote: dict[str, Vote | None] = dict.fromkeys(self._roots)
        self._vote_unknown = set(self._roots)
        #: When each vote was set to its current claim (that claim existed before then).
        self._voted_at: dict[str, float] = dict.fromkeys(self._roots, now)
        self._blocked: set[tuple[str, str, int]] = set()
        self._external = ExternalLease(self._stretch)
        self._none = config.quorum is QuorumMode.NONE
        self._quorate = self._none
        self._quorate_until = math.inf if self._none else -math.inf
        self._feeding = False
        self._seq = 0
        self._next_send = now
        self._last_sent_state: object = None
        self._next_witness = now
        self._grace_until = now + self._D
        self._failure: BaseException | None = None
        self._deadline: float | None = now
        self._placed: dict[str, str | None] = dict.fromkeys(self._roots)
        self._out: list[ClusterOutput] = []
        if self._none:
            self._out.append(UnsafeQuorumMode(at=now))

    # -----------------------------------------------------------------------------------------
    # Public API

    @property
    def node(self) -> str:
        """This node's name."""
        return self._me

    @property
    def incarnation(self) -> int:
        """This start's incarnation."""
        return self._inc

    @property
    def quorate(self) -> bool:
        """Whether this node may serve now."""
        return self._quorate

    @property
    def failed(self) -> bool:
        """Whether the engine poisoned itself."""
        return self._failure is not None

    def handle(self, event: ClusterEvent, now: float) -> list[ClusterOutput]:
        """Apply one event at ``now``; return the commands and notifications it causes.

        :raises EngineUsageError: the event or time is invalid; nothing changed.
        :raises EngineFailed: the engine is poisoned by an earlier internal error.
        """
        self._check_usable(now)
        self._validate(event)
        return self._guarded(self._apply, event, now)

    def handle_timer(self, now: float) -> list[ClusterOutput]:
        """Act on every deadline at or before ``now``.

        :raises EngineUsageError: ``now`` is invalid; nothing changed.
        :raises EngineFailed: the engine is poisoned by an earlier internal error.
        """
        self._check_usable(now)
        return self._guarded(lambda _event, at: None, None, now)

    def start(self) -> list[ClusterOutput]:
        """The outputs of the start itself (the first heartbeat), at the construction time."""
        return self.handle_timer(self._now)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (never ``None`` while running)."""
        return self._deadline

    def _compute_deadline(self) -> float:
        times = [self._next_send]
        if (deadline := self._membership.next_deadline()) is not None:
            times.append(deadline)
        if self._quorate and math.isfinite(self._quorate_until):
            times.append(self._quorate_until)
        if self._external.held_since is not None:
            times.append(self._external.valid_until)
            claim_ready = self._external.held_since + self._stretch * self._config.watchdog_timeout
            if claim_ready > self._now:
                times.append(claim_ready)
        if not self._quorate and self._grace_until > self._now:
            times.append(self._grace_until)
        times.extend(self._proof_deadlines())
        return min(times)

    def snapshot(self) -> ClusterSnapshot:
        """A frozen picture of this node's cluster state. Changes nothing."""
        hierarchies = {}
        for root in self._roots:
            claim = self._claims.get(root)
            hierarchies[root] = ClusterHierarchyStatus(
                root=root,
                phase=self._phase[root],
                claim=claim.number if claim else None,
                granted=claim is not None and self._votes_for(root, claim.number)[0],
                vote=self._vote[root],
                placement=self._placement(root),
                failed=root in self._failed,
            )
        return ClusterSnapshot(
            at=self._now,
            node=self._me,
            incarnation=self._inc,
            quorate=self._quorate,
            votes=self._count_votes(self._now),
            needed=self._needed,
            feeding_watchdog=self._feeding,
            maintenance=self._maintenance,
            peers=self._membership.statuses(),
            hierarchies=MappingProxyType(hierarchies),
        )

    def placement(self, root: str) -> str | None:
        """Where placement puts ``root`` in this node's view now."""
        return self._placement(root)

    # -----------------------------------------------------------------------------------------
    # Guards

    def _check_usable(self, now: float) -> None:
        if self._failure is not None:
            raise EngineFailed(
                "the cluster engine stopped after an internal error; stop feeding the watchdog"
            ) from self._failure
        _check_time(now)
        if now < self._now:
            raise EngineUsageError(
                f"time went backwards: now={now!r} but the engine was at {self._now!r}; "
                "pass a monotonic clock"
            )

    def _validate(self, event: object) -> None:
        if isinstance(event, HeartbeatReceived):
            self._membership.check(event.node, event.path)
            report = event.report
            if not isinstance(report, PeerReport) or report.node != event.node:
                raise EngineUsageError(
                    f"heartbeat from {event.node!r} carries a report for "
                    f"{getattr(report, 'node', report)!r}; the wire layer must check the sender"
                )
            for name in ("incarnation", "seq"):
                value = getattr(report, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise EngineUsageError(f"report.{name} must be a non-negative int: {value!r}")
            _check_time(report.sent_at)
        elif isinstance(event, LocalHierarchyChanged):
            self._check_root(event.root)
            if not isinstance(event.phase, LocalPhase):
                raise EngineUsageError(f"phase must be a LocalPhase, got {event.phase!r}")
        elif isinstance(event, HierarchyEscalated):
            self._check_root(event.root)
        elif isinstance(event, FailureMarksCleared):
            if event.root is not None:
                self._check_root(event.root)
        elif isinstance(event, MaintenanceChanged):
            if not isinstance(event.on, bool):
                raise EngineUsageError(f"MaintenanceChanged.on must be a bool, got {event.on!r}")
        elif isinstance(event, FenceConfirmed | PeerOutOfServiceEvidence):
            if event.node not in self._membership.peers:
                raise EngineUsageError(
                    f"{type(event).__name__} names {event.node!r}, which is not a peer; "
                    f"peers: {list(self._membership.peers)}"
                )
            if isinstance(event, PeerOutOfServiceEvidence):
                self._check_root(event.root)
        elif isinstance(event, WitnessVoteGranted | WitnessVoteRefused):
            if self._config.quorum is not QuorumMode.WITNESS:
                raise EngineUsageError(
                    f"{type(event).__name__} in quorum mode {self._config.quorum.value!r}; "
                    "only mode 'witness' asks the witness"
                )
            _check_time(event.requested_at)
            if event.requested_at > self._now:
                raise EngineUsageError(
                    f"witness answer for a request at {event.requested_at!r}, which is in the "
                    "future; quote RequestWitnessVote.requested_at"
                )
            if isinstance(event, WitnessVoteGranted):
                _check_duration(event.valid_for, "valid_for")
        elif isinstance(event, StorageReservationHeld | StorageReservationLost):
            if self._config.quorum is not QuorumMode.STORAGE:
                raise EngineUsageError(
                    f"{type(event).__name__} in quorum mode {self._config.quorum.value!r}; "
                    "only mode 'storage' uses the reservation"
                )
            if isinstance(event, StorageReservationHeld):
                _check_time(event.checked_at)
                _check_duration(event.valid_for, "valid_for")
        else:
            raise EngineUsageError(f"not a cluster event: {event!r}")

    def _check_root(self, root: object) -> None:
        if root not in self._model.hierarchies:
            raise EngineUsageError(
                f"no hierarchy is named {root!r}; known: {', '.join(self._roots) or 'none'}"
            )

    def _guarded(
        self, apply: Callable[[Any, float], object], event: object, now: float
    ) -> list[ClusterOutput]:
        try:
            self._now = now
            self._advance(now)
            if apply(event, now) is not _NOTHING_NEW or (
                self._deadline is not None and now >= self._deadline
            ):
                self._settle(now)
            # Computed once per input: nothing changes between inputs, and the runtime asks
            # after every one.
            self._deadline = self._compute_deadline()
        except BaseException as exc:
            # Any error here is a bug; a half-updated safety core cannot be trusted, so it
            # refuses everything from now on and the runtime stops feeding the watchdog.
            self._failure = exc
            raise EngineFailed("internal error in the cluster engine") from exc
        out, self._out = self._out, []
        return out

    # -----------------------------------------------------------------------------------------
    # Inputs

    def _apply(self, event: ClusterEvent, now: float) -> object:
        if isinstance(event, HeartbeatReceived):
            notices = self._membership.heartbeat(event.node, event.path, now)
            self._out.extend(notices)
            if not self._accept(event.report, now) and not notices:
                # The same report again on another path (or an old one): nothing to decide
                # before the next deadline. Half of all inputs, with two paths.
                return _NOTHING_NEW
        elif isinstance(event, LocalHierarchyChanged):
            self._phase[event.root] = event.phase
        elif isinstance(event, HierarchyEscalated):
            if event.failover_needed:
                self._failed.add(event.root)
        elif isinstance(event, FailureMarksCleared):
            if event.root is None:
                self._failed.clear()
            else:
                self._failed.discard(event.root)
        elif isinstance(event, MaintenanceChanged):
            self._maintenance = event.on
        elif isinstance(event, FenceConfirmed):
            report = self._reports.pop(event.node, None)
            self._fenced[event.node] = report.incarnation if report else 0
        elif isinstance(event, PeerOutOfServiceEvidence):
            report = self._reports.get(event.node)
            self._evidence[(event.node, event.root)] = report.incarnation if report else 0
        elif isinstance(event, WitnessVoteGranted):
            self._external.granted(event.requested_at, event.valid_for, now)
        elif isinstance(event, WitnessVoteRefused):
            pass  # nothing to record: the vote is simply not ours
        elif isinstance(event, StorageReservationHeld):
            self._external.granted(event.checked_at, event.valid_for, now)
        elif isinstance(event, StorageReservationLost):
            self._external.lost()
            self._external_lapsed(now)
        return None

    def _accept(self, report: PeerReport, now: float) -> bool:
        node = report.node
        if report.incarnation <= self._fenced.get(node, -1):
            return False  # fenced: what that incarnation says no longer counts
        old = self._reports.get(node)
        if old is not None and (report.incarnation, report.seq) <= (old.incarnation, old.seq):
            return False  # reordered, replayed, or the same on another path: the newest counts
        self._reports[node] = report
        self._received[node] = now
        return True

    # -----------------------------------------------------------------------------------------
    # Time

    def _advance(self, now: float) -> None:
        self._out.extend(self._membership.tick(now))
        if self._external.expire(now):
            self._external_lapsed(now)
        if self._quorate and now >= self._quorate_until:
            self._lose_quorum(now, "too few votes are fresh (quorum lease lapsed)")

    def _external_lapsed(self, now: float) -> None:
        for root, claim in list(self._claims.items()):
            if claim.bound is not None:
                self._drop_claim(root)
                self._take_out(root, "the external vote this claim needed lapsed")

    def _lose_quorum(self, now: float, reason: str) -> None:
        self._quorate = False
        self._out.append(QuorumLost(at=now, reason=reason))
        # Claims die with the quorum: every vote a node holds is for a claim, and a claim made
        # before the lapse is never used again (the out-proof relies on it).
        for root in list(self._claims):
            self._drop_claim(root)
        for root in self._roots:
            self._take_out(root, "quorum lost")
        self._set_feeding(False, now, f"quorum lost: {reason}")

    def _proof_deadlines(self) -> list[float]:
        """Times at which a blocked vote may become movable without any new input."""
        times = []
        wait = self._stretch * self._config.watchdog_timeout
        for root in self._roots:
            blocker = self._blocker(root)
            if blocker is None:
                continue
            node, since = blocker
            proof = self._out_proof(node, since)
            if proof is not None and proof + wait > self._now:
                times.append(proof + wait)
            # The own silence interval grows with time: recheck when it can first help.
            last = self._membership.last_heard(node)
            first = (self._start if last is None else last) + self._stretch * self._D
            if first > self._now:
                times.append(first)
            evidence_at = (self._start if last is None else last) + self._D
            if (node, root) in self._evidence and evidence_at > self._now:
                times.append(evidence_at)
        return times

    # -----------------------------------------------------------------------------------------
    # Settling: quorum, votes, claims, commands, watchdog, heartbeats

    def _settle(self, now: float) -> None:
        self._update_quorum(now)
        # Placement reads only membership, reports, quorum and marks, which nothing below
        # changes; computed once per input.
        self._placed = {root: self._placement(root) for root in self._roots}
        for root in self._roots:
            self._update_vote(root, now)
        for root in self._roots:
            self._update_claim(root, now)
        self._update_feeding(now)
        self._maybe_ask_witness(now)
        self._maybe_send(now)

    def _vote_expiries(self) -> list[float]:
        expiries = [math.inf]
        for node, report in self._reports.items():
            if not self._usable(node):
                continue
            echo = report.echoes.get(self._me)
            if isinstance(echo, Echo) and echo.incarnation == self._inc:
                expiries.append(echo.sent_at + self._D)
        if self._external.held_since is not None:
            expiries.append(self._external.valid_until)
        return expiries

    def _count_votes(self, now: float) -> int:
        return sum(1 for expiry in self._vote_expiries() if expiry > now)

    def _update_quorum(self, now: float) -> None:
        if self._none:
            return
        until = lease_expiry(self._vote_expiries(), self._needed)
        if not self._quorate and until > now:
            self._quorate = True
            self._out.append(
                QuorumGained(at=now, votes=self._count_votes(now), needed=self._needed)
            )
        if self._quorate:
            self._quorate_until = until
            if until <= now:
                self._lose_quorum(now, "too few votes are fresh")

    def _usable(self, node: str) -> bool:
        report = self._reports.get(node)
        return report is not None and report.incarnation > self._fenced.get(node, -1)

    def _peer_hierarchy(self, node: str, root: str) -> HierarchyReport:
        report = self._reports.get(node)
        if report is None:
            return HierarchyReport()
        entry = report.hierarchies.get(root)
        return entry if isinstance(entry, HierarchyReport) else HierarchyReport()

    def _placement(self, root: str) -> str | None:
        eligible = []
        holders = []
        for node in self._model.eligible_nodes(root):
            if node == self._me:
                if self._quorate and root not in self._failed and not self._maintenance:
                    eligible.append(node)
                if self._phase[root] in _RUNNING:
                    holders.append(node)
                continue
            if node not in self._membership.peers:
                continue  # a node in the model that is not in the cluster never hosts it
            report = self._reports.get(node)
            if report is None or not self._membership.alive(node) or not self._usable(node):
                continue
            entry = self._peer_hierarchy(node, root)
            if report.quorate and not entry.failed and not report.maintenance:
                eligible.append(node)
            if entry.phase in _RUNNING:
                holders.append(node)
        return place(
            self._model.hierarchies[root].nodes,
            switchback=self._model.hierarchies[root].switchback,
            eligible=eligible,
            holders=holders,
        )

    # Votes ----------------------------------------------------------------------------------

    def _current_claim_of(self, node: str, root: str) -> Vote | None:
        if node == self._me:
            claim = self._claims.get(root)
            return Vote(self._me, self._inc, claim.number) if claim else None
        report = self._reports.get(node)
        if report is None or not self._usable(node):
            return None
        claim_number = self._peer_hierarchy(node, root).claim
        if claim_number is None:
            return None
        return Vote(node, report.incarnation, claim_number)

    def _update_vote(self, root: str, now: float) -> None:
        if self._none:
            return
        target = self._placed[root]
        if target is None:
            return
        wanted = self._current_claim_of(target, root)
        current = self._vote[root]
        if wanted is None or wanted == current:
            return
        if root in self._vote_unknown:
            if not self._unknown_vote_free(root, target, now):
                return
        elif (
            current is not None
            and current.node != target
            and not self._released(root, current, now)
        ):
            return
        self._vote[root] = wanted
        self._voted_at[root] = now
        self._vote_unknown.discard(root)

    def _unknown_vote_free(self, root: str, target: str, now: float) -> bool:
        """After a start: may the vote go to ``target`` without knowing whom it went to?"""
        for node in self._config.names:
            if node == target:
                continue
            if node == self._me:
                if self._phase[root] is not LocalPhase.OUT:
                    return False
                continue
            report = self._reports.get(node)
            echo = report.echoes.get(self._me) if report is not None else None
            if (
                report is not None
                and self._usable(node)
                and isinstance(echo, Echo)
                and echo.incarnation == self._inc
                and self._peer_hierarchy(node, root).phase is LocalPhase.OUT
            ):
                continue
            if not self._dead_proof(node, root, self._start, now):
                return False
        return True

    def _released(self, root: str, vote: Vote, now: float) -> bool:
        """Whether ``vote``'s node no longer runs ``root`` under it (rules 1-4)."""
        node = vote.node
        if node == self._me:
            mine = self._current_claim_of(self._me, root)
            return mine != vote and self._phase[root] is LocalPhase.OUT
        report = self._reports.get(node)
        if report is not None and self._usable(node):
            entry = self._peer_hierarchy(node, root)
            claim_gone = report.incarnation != vote.incarnation or entry.claim != vote.claim
            if claim_gone and entry.phase is LocalPhase.OUT:
                return True
            if entry.phase is LocalPhase.STUCK:
                key = (root, node, report.incarnation)
                if key not in self._blocked:
                    self._blocked.add(key)
                    self._out.append(
                        TakeoverBlocked(
                            at=now,
                            root=root,
                            node=node,
                            reason=f"{node} failed to take it out and may still run it; fence "
                            f"{node} or confirm it is down",
                        )
                    )
        since = self._voted_at[root]
        return self._dead_proof(node, root, since, now)

    def _blocker(self, root: str) -> tuple[str, float] | None:
        """The peer whose proof of absence the vote for ``root`` waits on, if just one."""
        current = self._vote[root]
        if root in self._vote_unknown or current is None or current.node == self._me:
            return None
        if self._placed[root] in (None, current.node):
            return None  # the vote is not trying to move
        return current.node, self._voted_at[root]

    def _dead_proof(self, node: str, root: str, since: float, now: float) -> bool:
        """Rules 2-4: ``node`` runs nothing of ``root`` from before ``since`` any more."""
        report = self._reports.get(node)
        incarnation = report.incarnation if report else 0
        if node in self._fenced and not self._usable(node):
            return True
        last = self._membership.last_heard(node)
        silent_since = self._start if last is None else last
        if self._evidence.get((node, root)) == incarnation and now >= silent_since + self._D:
            return True
        proof = self._out_proof(node, since)
        return proof is not None and now >= proof + self._stretch * self._config.watchdog_timeout

    def _out_proof(self, node: str, since: float) -> float | None:
        """``t*`` for ``node`` (see the module docstring), not before ``since``."""
        now = self._now
        last = self._membership.last_heard(node)
        silences = [
            Silence(
                start=(self._start if last is None else last) + self._stretch * self._D, end=now
            )
        ]
        for peer, report in self._reports.items():
            if peer == node or not self._usable(peer):
                continue
            echo = report.echoes.get(self._me)
            if not isinstance(echo, Echo) or echo.incarnation != self._inc:
                continue  # its report may predate this start: its times cannot be placed
            silence = report.silence.get(node)
            if _finite(silence):
                heard_before = self._received[peer] - silence / self._stretch  # type: ignore[operator]
                silences.append(
                    Silence(start=heard_before + self._stretch * self._D, end=echo.sent_at)
                )
            # The external vote, while that peer held it: nobody else could count it then.
            # Holdings never overlap, so the one vote is never counted twice at one time.
            held = report.external
            if isinstance(held, tuple) and len(held) == 2 and all(map(_finite, held)):
                held_for, valid_for = held
                silences.append(
                    Silence(
                        start=self._received[peer] - held_for / self._stretch,
                        end=echo.sent_at + valid_for / self._stretch,
                    )
                )
        if self._external.held_since is not None:
            silences.append(
                Silence(start=self._external.held_since, end=min(now, self._external.valid_until))
            )
        return out_of_service_since(silences, needed=self._needed, after=since)

    # Claims and commands ---------------------------------------------------------------------

    def _votes_for(self, root: str, number: int) -> tuple[bool, bool]:
        """(majority, needs the external vote) for this node's claim ``number`` on ``root``."""
        wanted = Vote(self._me, self._inc, number)
        count = 0
        for node in self._config.names:
            vote = self._vote[root] if node == self._me else self._peer_vote(node, root)
            if vote == wanted:
                count += 1
        if count >= self._needed:
            return True, False
        external = self._external
        ready = (
            external.held_since is not None
            and external.valid(self._now)
            and self._now >= external.held_since + self._stretch * self._config.watchdog_timeout
        )
        return (ready and count + 1 >= self._needed), True

    def _peer_vote(self, node: str, root: str) -> Vote | None:
        if not self._usable(node):
            return None
        vote = self._peer_hierarchy(node, root).vote
        return vote if isinstance(vote, Vote) else None

    def _wants(self, root: str) -> bool:
        return (
            self._quorate
            and not self._maintenance
            and root not in self._failed
            and self._placed[root] == self._me
        )

    def _update_claim(self, root: str, now: float) -> None:
        if self._none:
            self._update_unsafe(root, now)
            return
        wants = self._wants(root)
        claim = self._claims.get(root)
        phase = self._phase[root]
        if wants and claim is None:
            claim = self._claims[root] = _Claim(self._next_claim)
            self._next_claim += 1
        if claim is not None and not wants and phase is LocalPhase.OUT:
            self._drop_claim(root)
            claim = None
        if claim is not None:
            majority, external = self._votes_for(root, claim.number)
            if majority and claim.bound is None and external and phase is LocalPhase.OUT:
                claim.bound = self._external.held_since
            elif majority and not external:
                claim.bound = None  # a majority of nodes now: no longer tied to the lease
            if wants and majority and phase is LocalPhase.OUT:
                self._phase[root] = LocalPhase.STARTING
                self._out.append(BringInService(root))
                return
        if phase in _RUNNING and not wants and (self._quorate or now >= self._grace_until):
            # Found running before quorum formed (a daemon restart): kept for the grace period
            # (the deadtime) in case this node can claim it; the watchdog is not fed meanwhile.
            self._take_out(root, "placed on another node" if self._quorate else "not quorate")

    def _update_unsafe(self, root: str, now: float) -> None:
        wants = (
            not self._maintenance and root not in self._failed and self._placed[root] == self._me
        )
        phase = self._phase[root]
        if wants and phase is LocalPhase.OUT:
            busy = any(
                self._membership.alive(node)
                and self._peer_hierarchy(node, root).phase is not LocalPhase.OUT
                for node in self._membership.peers
            )
            if not busy:
                self._phase[root] = LocalPhase.STARTING
                self._out.append(BringInService(root))
        elif not wants and phase in _RUNNING:
            self._take_out(root, "placed on another node")

    def _drop_claim(self, root: str) -> None:
        self._claims.pop(root, None)

    def _take_out(self, root: str, reason: str) -> None:
        if self._phase[root] in _RUNNING:
            self._phase[root] = LocalPhase.STOPPING
            self._out.append(TakeOutOfService(root, reason=reason))

    # Watchdog, witness, heartbeats --------------------------------------------------------------

    def _may_feed(self) -> bool:
        # Nothing in service: a reset would protect nothing, so feeding is harmless. Otherwise
        # everything here must run under a live claim with a majority (claims die with the
        # quorum, so this implies quorate).
        for root in self._roots:
            if self._phase[root] is LocalPhase.OUT:
                continue
            claim = self._claims.get(root)
            if not self._quorate:
                return False
            if claim is None or not self._votes_for(root, claim.number)[0]:
                return False
        return True

    def _update_feeding(self, now: float) -> None:
        if self._none:
            return
        if self._may_feed():
            self._set_feeding(True, now)
        else:
            self._set_feeding(False, now, "something in service here lacks a granted claim")

    def _set_feeding(self, on: bool, now: float, reason: str = "") -> None:
        if self._none or on == self._feeding:
            return
        self._feeding = on
        self._out.append(FeedWatchdog() if on else StopFeedingWatchdog(reason=reason))

    def _maybe_ask_witness(self, now: float) -> None:
        if self._config.quorum is not QuorumMode.WITNESS or now < self._next_witness:
            return
        node_votes = sum(1 for expiry in self._vote_expiries() if expiry > now)
        if self._external.valid(now):
            node_votes -= 1
        bound = any(claim.bound is not None for claim in self._claims.values())
        if node_votes < self._needed or bound:
            self._out.append(RequestWitnessVote(requested_at=now))
            self._next_witness = now + self._config.heartbeat_interval

    def _report_state(self) -> object:
        return (
            self._quorate,
            self._maintenance,
            tuple(self._hierarchy_report(root) for root in self._roots),
        )

    def _hierarchy_report(self, root: str) -> HierarchyReport:
        claim = self._claims.get(root)
        return HierarchyReport(
            phase=self._phase[root],
            claim=claim.number if claim else None,
            failed=root in self._failed,
            vote=self._vote[root],
        )

    def _maybe_send(self, now: float) -> None:
        state = self._report_state()
        if now < self._next_send and state == self._last_sent_state:
            return
        self._last_sent_state = state
        while self._next_send <= now:
            self._next_send += self._config.heartbeat_interval
        self._seq += 1
        echoes = {}
        for node, report in self._reports.items():
            if self._usable(node):
                echoes[node] = Echo(report.incarnation, report.sent_at)
        silence = {}
        for node in self._membership.peers:
            last = self._membership.last_heard(node)
            silence[node] = now - (self._start if last is None else last)
        hierarchies = {root: self._hierarchy_report(root) for root in self._roots}
        external = None
        if self._external.held_since is not None and self._external.valid(now):
            external = (now - self._external.held_since, self._external.valid_until - now)
        if self._feeding:
            self._out.append(FeedWatchdog())
        self._out.append(
            SendHeartbeat(
                PeerReport(
                    node=self._me,
                    incarnation=self._inc,
                    seq=self._seq,
                    sent_at=now,
                    quorate=self._quorate,
                    maintenance=self._maintenance,
                    echoes=echoes,
                    silence=silence,
                    hierarchies=hierarchies,
                    external=external,
                )
            )
        )


def _check_time(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EngineUsageError(
            f"a time must be a finite number of seconds from a monotonic clock, got {value!r}"
        )


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _check_duration(value: object, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise EngineUsageError(f"{name} must be a positive number of seconds, got {value!r}")
