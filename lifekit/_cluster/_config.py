"""The cluster's settings as the safety core reads them: nodes, paths, timers, quorum mode.

Everything here is immutable, validated data; the derived bounds (:attr:`ClusterConfig.deadtime`,
:meth:`ClusterConfig.takeover_wait`) are the numbers the safety argument in
:mod:`lifekit._cluster._engine` is stated in, so they are computed in one place.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable

import attrs

from lifekit.errors import ConfigError, ConfigIssue

__all__ = ["ClusterConfig", "NodeSpec", "QuorumMode"]


class QuorumMode(enum.Enum):
    """How a node decides whether it may serve. The values are a configuration contract."""

    #: Strictly more than half of the configured nodes, this one included, in two-way contact.
    MAJORITY = "majority"
    #: Like ``majority``, plus one vote held by whichever node holds the witness's lease.
    WITNESS = "witness"
    #: Like ``witness``, but the extra vote is the shared LUN's reservation (the runtime's hook).
    STORAGE = "storage"
    #: Always quorate. Split brain is possible: needs ``unsafe_no_quorum=True``.
    NONE = "none"


def _paths(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class NodeSpec:
    """One configured node and the names of the communication paths that reach it.

    :param name: the node's name, unique in the cluster.
    :param paths: the names of its paths (e.g. ``("lan", "backbone")``), each an independent
        network; the node is dead only when every one is.
    """

    name: str
    paths: tuple[str, ...] = attrs.field(default=("main",), converter=_paths)


def _nodes(value: Iterable[NodeSpec]) -> tuple[NodeSpec, ...]:
    return tuple(value)


@attrs.frozen
class ClusterConfig:
    """The settings every node of one cluster shares.

    :param nodes: the configured nodes.
    :param heartbeat_interval: seconds between heartbeats on each path.
    :param misses: a path is down after ``heartbeat_interval * misses`` seconds without a
        heartbeat on it (the *deadtime*).
    :param watchdog_timeout: ``W``: the node's watchdog resets it this long after the last
        feed. A node that loses quorum stops feeding, so it is out of service within ``W``.
    :param clock_margin: the largest relative difference between the rates of any two
        clocks in the cluster (nodes, watchdogs, the witness): ``0.1`` means a second on one
        may be up to 1.1 s on another. Every wait that relies on another node's timer is
        stretched by this much.
    :param quorum: the quorum mode.
    :param unsafe_no_quorum: required to use :attr:`QuorumMode.NONE`.
    :param external_lease: seconds a witness grant lasts (witness mode), measured by the
        holder from when it sent the request.
    """

    nodes: tuple[NodeSpec, ...] = attrs.field(converter=_nodes)
    heartbeat_interval: float = 1.0
    misses: int = 5
    watchdog_timeout: float = 5.0
    clock_margin: float = 0.1
    quorum: QuorumMode = QuorumMode.MAJORITY
    unsafe_no_quorum: bool = False
    external_lease: float = 5.0

    def __attrs_post_init__(self) -> None:
        issues = list(self._issues())
        if issues:
            raise ConfigError(issues)

    def _issues(self) -> Iterable[ConfigIssue]:
        names = [node.name for node in self.nodes]
        if not names:
            yield ConfigIssue("cluster.nodes", "no nodes are configured", expected="list them")
        if len(set(names)) != len(names):
            yield ConfigIssue(
                "cluster.nodes", "a node is listed twice", value=names, expected="unique names"
            )
        for node in self.nodes:
            if not node.name or not isinstance(node.name, str):
                yield ConfigIssue("cluster.nodes", "a node needs a name", value=node.name)
            if not node.paths or len(set(node.paths)) != len(node.paths):
                yield ConfigIssue(
                    f"cluster.nodes.{node.name}.paths",
                    "needs at least one path, each named once",
                    value=list(node.paths),
                    expected="two or more independent networks, e.g. ['lan', 'backbone']",
                )
        timers = {
            "heartbeat_interval": (self.heartbeat_interval, 0.01, "at least 0.01 s (0.1 is fast)"),
            "watchdog_timeout": (self.watchdog_timeout, 0.01, "a positive number of seconds"),
            "external_lease": (self.external_lease, 0.01, "a positive number of seconds"),
        }
        for name, (value, low, expected) in timers.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                yield ConfigIssue(f"cluster.{name}", "must be a number", value=value)
            elif not math.isfinite(value) or value < low:
                yield ConfigIssue(f"cluster.{name}", "out of range", value=value, expected=expected)
        if isinstance(self.misses, bool) or not isinstance(self.misses, int) or self.misses < 2:
            yield ConfigIssue(
                "cluster.misses",
                "must be a whole number of at least 2 (one lost heartbeat is not a death)",
                value=self.misses,
            )
        if (
            isinstance(self.heartbeat_interval, int | float)
            and isinstance(self.watchdog_timeout, int | float)
            and self.watchdog_timeout < 2 * self.heartbeat_interval
        ):
            yield ConfigIssue(
                "cluster.watchdog_timeout",
                "must be at least twice the heartbeat interval (the watchdog is fed with each "
                "heartbeat)",
                value=self.watchdog_timeout,
                expected=f">= {2 * self.heartbeat_interval:g}",
            )
        margin = self.clock_margin
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
            yield ConfigIssue(
                "cluster.clock_margin",
                "must be a fraction from 0 to below 1",
                value=margin,
                expected="e.g. 0.1: clocks may run up to 10 % apart",
            )
        mode: object = self.quorum  # typed as the enum, but TOML may hand over anything
        if not isinstance(mode, QuorumMode):
            yield ConfigIssue(
                "cluster.quorum",
                "unknown quorum mode",
                value=mode,
                expected=", ".join(mode.value for mode in QuorumMode),
            )
        elif self.quorum is QuorumMode.NONE and self.unsafe_no_quorum is not True:
            yield ConfigIssue(
                "cluster.quorum",
                "mode 'none' lets both sides of a partition serve (split brain)",
                value="none",
                expected="set unsafe_no_quorum = true to accept that, or use 'majority', "
                "'witness' or 'storage'",
            )

    @property
    def names(self) -> tuple[str, ...]:
        """The configured node names, in configuration order."""
        return tuple(node.name for node in self.nodes)

    def paths_of(self, node: str) -> tuple[str, ...]:
        """The path names of ``node``.

        :raises KeyError: no such node.
        """
        for spec in self.nodes:
            if spec.name == node:
                return spec.paths
        raise KeyError(node)

    @property
    def deadtime(self) -> float:
        """``D``: seconds of silence after which a path (and a node with all paths) is down."""
        return self.heartbeat_interval * self.misses

    @property
    def stretch(self) -> float:
        """``1 + clock_margin``: the factor applied to another clock's durations."""
        return 1.0 + self.clock_margin

    @property
    def external_votes(self) -> int:
        """1 in witness and storage modes (the witness or the reservation), else 0."""
        return 1 if self.quorum in (QuorumMode.WITNESS, QuorumMode.STORAGE) else 0

    @property
    def total_votes(self) -> int:
        """Every vote there is: one per node, plus the external one."""
        return len(self.nodes) + self.external_votes

    def takeover_wait(self) -> float:
        """The safe wait from a peer's last heartbeat to taking over from it without evidence.

        ``(1 + clock_margin) * (deadtime + watchdog_timeout)``: the peer's quorum lease
        lapses at most a stretched deadtime after anyone last heard it, and its watchdog fires
        at most a stretched ``W`` later. Mode ``none`` waits only the deadtime.
        """
        if self.quorum is QuorumMode.NONE:
            return self.deadtime
        return self.stretch * (self.deadtime + self.watchdog_timeout)
