"""Membership: which peers are heard, on which communication paths, and since when.

A path to a peer is *up* while a heartbeat arrived on it within the deadtime
(``heartbeat_interval * misses``); a peer is *alive* while at least one of its paths is up. One
path going down is a warning (:class:`PathDown`), never a death; :class:`NodeDead` comes only
when the last path goes. Every path starts down and silent: nothing is assumed about a peer
until it is heard. Pure and clock-free like the rest of the core: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

from lifekit._cluster._config import ClusterConfig
from lifekit._cluster._messages import NodeAlive, NodeDead, PathDown, PathUp
from lifekit.errors import EngineUsageError

__all__ = ["Membership", "MembershipNotice", "PathStatus", "PeerStatus"]

MembershipNotice = PathDown | PathUp | NodeDead | NodeAlive


@attrs.frozen
class PathStatus:
    """One path to one peer: up or down, and when a heartbeat last came on it."""

    up: bool
    last_heard: float | None


@attrs.frozen
class PeerStatus:
    """One peer: alive (any path up), each path's status, and when anything last came from it."""

    alive: bool
    paths: Mapping[str, PathStatus]
    last_heard: float | None


class Membership:
    """Per-peer, per-path heartbeat tracking for node ``me``.

    :param config: the cluster settings (nodes, their paths, the deadtime).
    :param me: this node's name.
    """

    def __init__(self, config: ClusterConfig, me: str) -> None:
        if me not in config.names:
            raise EngineUsageError(f"node {me!r} is not configured; nodes: {list(config.names)}")
        self._deadtime = config.deadtime
        self._peers = tuple(name for name in config.names if name != me)
        self._last: dict[tuple[str, str], float | None] = {
            (peer, path): None for peer in self._peers for path in config.paths_of(peer)
        }
        self._up: dict[tuple[str, str], bool] = dict.fromkeys(self._last, False)
        self._paths = {peer: config.paths_of(peer) for peer in self._peers}

    @property
    def peers(self) -> tuple[str, ...]:
        """Every configured node but this one."""
        return self._peers

    def check(self, node: object, path: object) -> None:
        """Raise :class:`EngineUsageError` unless ``path`` is a configured path of peer ``node``."""
        if node not in self._paths:
            raise EngineUsageError(
                f"heartbeat from {node!r}, which is not a peer; peers: {list(self._peers)}"
            )
        if path not in self._paths[node]:
            raise EngineUsageError(
                f"heartbeat from {node!r} on unknown path {path!r}; its paths: "
                f"{list(self._paths[node])}"
            )

    def heartbeat(self, node: str, path: str, now: float) -> list[MembershipNotice]:
        """Record a heartbeat from ``node`` on ``path`` at ``now``.

        :raises EngineUsageError: not a configured peer or path; nothing changed.
        """
        self.check(node, path)
        out: list[MembershipNotice] = []
        was_alive = self.alive(node)
        key = (node, path)
        self._last[key] = now
        if not self._up[key]:
            self._up[key] = True
            out.append(PathUp(at=now, node=node, path=path))
        if not was_alive:
            out.append(NodeAlive(at=now, node=node))
        return out

    def tick(self, now: float) -> list[MembershipNotice]:
        """Mark down every path silent for the deadtime; a peer with no path left is dead."""
        out: list[MembershipNotice] = []
        for node in self._peers:
            was_alive = self.alive(node)
            for path in self._paths[node]:
                key = (node, path)
                last = self._last[key]
                if self._up[key] and last is not None and now >= last + self._deadtime:
                    self._up[key] = False
                    out.append(PathDown(at=now, node=node, path=path))
            if was_alive and not self.alive(node):
                out.append(NodeDead(at=now, node=node))
        return out

    def next_deadline(self) -> float | None:
        """When the next up path goes down if nothing arrives on it."""
        times = [
            last + self._deadtime
            for key, last in self._last.items()
            if self._up[key] and last is not None
        ]
        return min(times) if times else None

    def alive(self, node: str) -> bool:
        """Whether any path to ``node`` is up."""
        return any(self._up[(node, path)] for path in self._paths[node])

    def last_heard(self, node: str) -> float | None:
        """When anything last came from ``node`` on any path (``None``: never)."""
        times = [t for path in self._paths[node] if (t := self._last[(node, path)]) is not None]
        return max(times) if times else None

    def status(self, node: str) -> PeerStatus:
        """One peer's status now."""
        paths = {
            path: PathStatus(up=self._up[(node, path)], last_heard=self._last[(node, path)])
            for path in self._paths[node]
        }
        return PeerStatus(
            alive=self.alive(node),
            paths=MappingProxyType(paths),
            last_heard=self.last_heard(node),
        )

    def statuses(self) -> Mapping[str, PeerStatus]:
        """Every peer's status now."""
        return MappingProxyType({node: self.status(node) for node in self._peers})
