"""Quorum arithmetic: vote leases, the witness, and the proof that a peer is out of service.

Three pure pieces, each stated in the clock of the node that uses it:

* :func:`lease_expiry`: a node is quorate while strictly more than half of all votes are
  *fresh* for it; each vote is a lease with an expiry, so quorum itself is a lease that
  expires at the ``needed``-th latest expiry.
* :class:`Witness` (the tie-breaker service's whole logic) and :class:`ExternalLease` (its
  holder's side, also used for the storage reservation): the external vote belongs to at most
  one node at a time, and the holder counts it only until ``requested_at + valid_for /
  stretch``, which ends before the witness could grant it to anyone else.
* :func:`out_of_service_since`: from silence intervals, the time ``t*`` at which a peer
  certainly could not count a majority of votes, hence was not quorate (see the safety
  argument in :mod:`lifekit._cluster._engine`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import attrs

__all__ = [
    "ExternalLease",
    "Silence",
    "Witness",
    "WitnessGrant",
    "lease_expiry",
    "needed_votes",
    "out_of_service_since",
]


def needed_votes(total: int) -> int:
    """Strictly more than half of ``total``."""
    return total // 2 + 1


def lease_expiry(expiries: Iterable[float], needed: int) -> float:
    """When a node stops being quorate if no vote is renewed.

    :param expiries: when each vote the node holds stops counting (its own: ``inf``).
    :param needed: how many votes make a quorum.
    :return: the ``needed``-th latest expiry, or ``-inf`` if there are too few votes.
    """
    ordered = sorted(expiries, reverse=True)
    return ordered[needed - 1] if len(ordered) >= needed else -math.inf


@attrs.frozen
class Silence:
    """An interval (prover's clock) during which a peer certainly could not count one vote."""

    start: float
    end: float


def out_of_service_since(silences: Iterable[Silence], *, needed: int, after: float) -> float | None:
    """The earliest ``t* >= after`` at which at least ``needed`` silences overlap.

    At ``t*`` the peer could count at most ``total - needed`` votes, fewer than a quorum, so its
    quorum lease had lapsed: every claim it held before ``t*`` is dead and it stopped feeding
    its watchdog. ``None`` if no such time is known yet.
    """
    intervals = [s for s in silences if s.end >= max(s.start, after)]
    candidates = sorted({after, *(s.start for s in intervals if s.start >= after)})
    for t in candidates:
        if sum(1 for s in intervals if s.start <= t <= s.end) >= needed:
            return t
    return None


@attrs.frozen
class WitnessGrant:
    """The witness's vote, granted to ``node`` until ``expires_at`` (the witness's clock)."""

    node: str
    expires_at: float
    valid_for: float


class Witness:
    """The tie-breaker: grants its vote to at most one node per cluster at a time.

    A grant lasts ``lease`` seconds of the witness's clock; the holder may renew it at any time,
    and nobody else gets it until it expires. One witness serves several clusters: each cluster
    name has its own vote. While the witness is down (or unreachable), nobody can get or renew
    its vote: a side that cannot reach it keeps quorum only with a plain majority of nodes.

    :param lease: seconds each grant lasts.
    """

    def __init__(self, lease: float) -> None:
        if not math.isfinite(lease) or lease <= 0:
            raise ValueError(f"the witness lease must be a positive number of seconds: {lease!r}")
        self._lease = lease
        self._held: dict[str, WitnessGrant] = {}
        self._now = -math.inf

    def grant(self, node: str, now: float, *, cluster: str = "default") -> WitnessGrant | None:
        """Grant (or renew) the vote of ``cluster`` to ``node`` at ``now``, or refuse (``None``).

        :raises ValueError: ``now`` went backwards.
        """
        if now < self._now:
            raise ValueError(f"time went backwards: {now!r} < {self._now!r}")
        self._now = now
        current = self._held.get(cluster)
        if current is not None and current.node != node and now < current.expires_at:
            return None
        grant = WitnessGrant(node=node, expires_at=now + self._lease, valid_for=self._lease)
        self._held[cluster] = grant
        return grant

    def holder(self, now: float, *, cluster: str = "default") -> str | None:
        """Who holds the vote of ``cluster`` at ``now``."""
        current = self._held.get(cluster)
        return current.node if current is not None and now < current.expires_at else None

    @property
    def grants(self) -> Mapping[str, WitnessGrant]:
        """The last grant per cluster (possibly expired)."""
        return dict(self._held)


class ExternalLease:
    """The holder's side of the external vote (witness or storage reservation).

    :param stretch: ``1 + clock_margin``: the holder shortens every validity by this factor so
        that it stops counting the vote before the grantor could give it to anyone else.
    """

    def __init__(self, stretch: float) -> None:
        self._stretch = stretch
        self.valid_until = -math.inf
        #: When the current unbroken holding began (this node's clock), or ``None``.
        self.held_since: float | None = None

    def granted(self, start: float, valid_for: float, now: float) -> None:
        """Record a grant whose validity started no earlier than ``start`` (this node's clock).

        A grant arriving while the previous one is still valid continues the holding (the
        grantor renewed it before it expired, so nobody else held it in between); otherwise a
        new holding begins now.
        """
        until = start + valid_for / self._stretch
        if until <= now:
            return  # answered too late to count for anything
        if not self.valid(now):
            self.held_since = now
        self.valid_until = max(self.valid_until, until)

    def lost(self) -> None:
        """The vote is gone (the reservation was lost)."""
        self.valid_until = -math.inf
        self.held_since = None

    def valid(self, now: float) -> bool:
        """Whether the vote counts at ``now``."""
        return self.held_since is not None and now < self.valid_until

    def expire(self, now: float) -> bool:
        """Forget a holding whose validity ended; ``True`` if one just ended."""
        if self.held_since is not None and now >= self.valid_until:
            self.held_since = None
            return True
        return False
