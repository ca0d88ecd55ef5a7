"""Membership and cluster settings: paths, deadtime, path death versus node death."""

from __future__ import annotations

import pytest

from lifekit._cluster import (
    ClusterConfig,
    Membership,
    NodeAlive,
    NodeDead,
    NodeSpec,
    PathDown,
    PathUp,
    QuorumMode,
)
from lifekit.errors import ConfigError, EngineUsageError


def config(interval: float = 1.0, misses: int = 5, **settings: object) -> ClusterConfig:
    return ClusterConfig(
        nodes=[NodeSpec("a", ("lan", "bk")), NodeSpec("b", ("lan", "bk")), NodeSpec("c")],
        heartbeat_interval=interval,
        misses=misses,
        **settings,  # type: ignore[arg-type]
    )


def test_defaults_are_safe_on_a_lan() -> None:
    settings = ClusterConfig(nodes=[NodeSpec("a"), NodeSpec("b"), NodeSpec("c")])
    assert settings.heartbeat_interval == 1.0
    assert settings.misses == 5
    assert settings.deadtime == 5.0
    assert settings.quorum is QuorumMode.MAJORITY
    assert settings.takeover_wait() == pytest.approx(1.1 * (5.0 + 5.0))


def test_fast_settings_down_to_a_tenth_of_a_second() -> None:
    settings = config(0.1, 3, watchdog_timeout=1.0)
    assert settings.deadtime == pytest.approx(0.3)
    assert settings.takeover_wait() == pytest.approx(1.1 * 1.3)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"quorum": QuorumMode.NONE}, "unsafe_no_quorum"),
        ({"misses": 1}, "one lost heartbeat is not a death"),
        ({"watchdog_timeout": 1.5}, "at least twice the heartbeat interval"),
        ({"clock_margin": 1.5}, "clock_margin"),
        ({"quorum": "majority"}, "unknown quorum mode"),
        ({"heartbeat_interval": 0.0}, "heartbeat_interval"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(settings: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"heartbeat_interval": 1.0, "misses": 5}
    base.update(settings)
    with pytest.raises(ConfigError, match=message):
        ClusterConfig(nodes=[NodeSpec("a"), NodeSpec("b")], **base)  # type: ignore[arg-type]


def test_mode_none_needs_the_unsafe_flag() -> None:
    settings = config(quorum=QuorumMode.NONE, unsafe_no_quorum=True)
    assert settings.takeover_wait() == settings.deadtime


def test_duplicate_nodes_and_paths_are_refused() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        ClusterConfig(nodes=[NodeSpec("a"), NodeSpec("a")])
    with pytest.raises(ConfigError, match="each named once"):
        ClusterConfig(nodes=[NodeSpec("a", ("lan", "lan"))])


def test_one_path_down_is_a_warning_all_paths_down_is_a_death() -> None:
    members = Membership(config(0.1, 5), "a")
    out = members.heartbeat("b", "lan", 0.0) + members.heartbeat("b", "bk", 0.0)
    assert out == [
        PathUp(at=0.0, node="b", path="lan"),
        NodeAlive(at=0.0, node="b"),
        PathUp(at=0.0, node="b", path="bk"),
    ]
    # Only "lan" keeps carrying heartbeats.
    for tick in range(1, 10):
        members.heartbeat("b", "lan", tick * 0.1)
    out = members.tick(0.9)
    assert out == [PathDown(at=0.9, node="b", path="bk")]
    assert members.alive("b")
    status = members.status("b")
    assert status.alive
    assert status.paths["lan"].up
    assert not status.paths["bk"].up
    assert status.paths["bk"].last_heard == 0.0
    # The deadtime is interval * misses = 0.5 s after the last heartbeat on the last path.
    assert members.next_deadline() == pytest.approx(1.4)
    assert members.tick(1.39) == []
    assert members.tick(1.4) == [PathDown(at=1.4, node="b", path="lan"), NodeDead(at=1.4, node="b")]
    assert not members.alive("b")
    assert members.heartbeat("b", "bk", 2.0) == [
        PathUp(at=2.0, node="b", path="bk"),
        NodeAlive(at=2.0, node="b"),
    ]


def test_a_peer_never_heard_is_down_without_a_notice() -> None:
    members = Membership(config(), "a")
    assert members.tick(100.0) == []
    assert not members.alive("c")
    assert members.last_heard("c") is None
    assert members.next_deadline() is None
    assert set(members.statuses()) == {"b", "c"}


def test_unknown_peers_and_paths_are_refused() -> None:
    members = Membership(config(), "a")
    with pytest.raises(EngineUsageError, match="not a peer"):
        members.heartbeat("a", "lan", 0.0)
    with pytest.raises(EngineUsageError, match="unknown path 'bk'"):
        members.heartbeat("c", "bk", 0.0)
    with pytest.raises(EngineUsageError, match="not configured"):
        Membership(config(), "z")
