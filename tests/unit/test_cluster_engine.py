"""The cluster engine on a simulated cluster: failover timing, evidence, fencing, switchback,
active/active, hangs, daemon restarts, placement, and bad input.

Every test runs on :class:`tests.unit.test_cluster_net.Net`, which fails the test the moment a
hierarchy is possibly in service on two nodes.
"""

from __future__ import annotations

import math

import pytest

from lifekit._cluster import (
    ClusterEngine,
    FenceConfirmed,
    HeartbeatReceived,
    LocalHierarchyChanged,
    LocalPhase,
    PeerReport,
    StorageReservationHeld,
    TakeoverBlocked,
    WitnessVoteGranted,
    place,
)
from lifekit._model import SwitchbackType
from lifekit.errors import EngineUsageError
from tests.unit.test_cluster_net import Net, make_config, make_model

INTERVAL = 0.2
WAIT = 1.1 * (0.6 + 1.0)  # (1 + margin) * (deadtime + W) with the simulator's settings


def first_start(net: Net, name: str, root: str, *, limit: float, step: float = 0.01) -> float:
    """Run until ``name`` starts bringing ``root`` in; return how long that took."""
    begin = net.now
    while net.now - begin < limit:
        net.run(step)
        if net.nodes[name].phase[root] is not LocalPhase.OUT:
            return net.now - begin
    raise AssertionError(f"{name} did not start {root} within {limit} s")


def three_nodes(**settings: object) -> Net:
    net = Net(make_model({"web": ("a", "b", "c")}, **settings), make_config("abc"))  # type: ignore[arg-type]
    net.run(3.0)
    assert net.running("web") == ["a"]
    return net


def test_the_config_states_the_wait() -> None:
    assert make_config("abc").takeover_wait() == pytest.approx(WAIT)


def test_a_crashed_holder_is_replaced_after_the_safety_wait_and_not_before() -> None:
    net = three_nodes()
    net.crash("a")
    took = first_start(net, "b", "web", limit=5.0)
    # The survivors last heard a at most one heartbeat before the crash.
    assert WAIT - INTERVAL <= took <= WAIT + 4 * INTERVAL
    net.run(1.0)
    assert net.running("web") == ["b"]


def test_evidence_lets_the_takeover_skip_the_watchdog_wait() -> None:
    net = three_nodes()
    net.crash("a")
    net.evidence("a", "web")  # e.g. nobody answers for the address any more
    took = first_start(net, "b", "web", limit=5.0)
    assert took <= 0.6 + 4 * INTERVAL < WAIT
    net.run(1.0)
    assert net.running("web") == ["b"]


def test_a_hung_holder_keeps_serving_until_its_watchdog_fires_and_is_never_doubled() -> None:
    # A watchdog much longer than the deadtime: a takeover that did not wait for it would
    # start while the hung node still serves.
    net = Net(make_model({"web": ("a", "b", "c")}), make_config("abc", watchdog_timeout=2.0))
    net.run(3.0)
    net.hang("a")
    net.run(1.75)  # the last feed was at most a heartbeat before the hang
    assert net.in_service("web") == ["a"]  # still serving: the others must not start yet
    net.run(6.0)
    assert not net.nodes["a"].up  # its watchdog reset it
    assert net.running("web") == ["b"]
    assert net.max_in_service["web"] == 1


def test_a_resumed_daemon_notices_its_lapsed_quorum_and_stands_down() -> None:
    net = Net(make_model({"web": ("a", "b", "c")}), make_config("abc", watchdog_timeout=5.0))
    net.run(3.0)
    net.hang("a")
    net.run(2.0)  # longer than a's quorum lease, shorter than its watchdog
    net.resume("a")  # fresh heartbeats wait in its queue, but the lapse is seen first
    net.run(0.05)
    assert net.nodes["a"].phase["web"] in (LocalPhase.STOPPING, LocalPhase.OUT)
    net.run(10.0)
    assert len(net.running("web")) == 1


def test_a_resource_failure_moves_the_hierarchy_at_once() -> None:
    net = three_nodes()
    net.fail_resource("a", "web")
    took = first_start(net, "b", "web", limit=3.0)
    assert took < 0.5  # a took it out and said so: no wait
    net.run(1.0)
    assert net.running("web") == ["b"]
    assert net.nodes["b"].engine is not None
    assert net.nodes["b"].engine.placement("web") == "b"


def test_a_failed_remove_blocks_the_takeover_until_the_node_is_fenced() -> None:
    net = three_nodes()
    net.fail_resource("a", "web", remove_fails=True)
    net.run(10.0)
    assert net.in_service("web") == ["a"]
    assert net.nodes["a"].phase["web"] is LocalPhase.STUCK
    blocked = [out for out in net.nodes["b"].outputs if isinstance(out, TakeoverBlocked)]
    assert blocked
    assert blocked[0].node == "a"
    assert "fence" in blocked[0].reason
    net.fence("a")
    took = first_start(net, "b", "web", limit=3.0)
    assert took < 1.0
    net.run(1.0)
    assert net.running("web") == ["b"]


def test_intelligent_switchback_stays_where_it_is() -> None:
    net = three_nodes()
    net.crash("a")
    net.run(4.0)
    assert net.running("web") == ["b"]
    net.restart("a")
    net.run(5.0)
    assert net.running("web") == ["b"]


def test_automatic_switchback_returns_to_the_first_node_with_a_planned_move() -> None:
    net = three_nodes(switchback=SwitchbackType.AUTOMATIC)
    net.crash("a")
    net.run(4.0)
    assert net.running("web") == ["b"]
    net.restart("a")
    net.run(5.0)
    assert net.running("web") == ["a"]
    assert net.max_in_service["web"] == 1  # b took it out before a brought it in


def test_active_active_hierarchies_move_independently() -> None:
    net = Net(make_model({"web": ("a", "b", "c"), "db": ("b", "c", "a")}), make_config("abc"))
    net.run(3.0)
    assert net.running("web") == ["a"]
    assert net.running("db") == ["b"]
    moves = net.moves
    net.crash("b")
    net.run(5.0)
    assert net.running("web") == ["a"]
    assert net.running("db") == ["c"]
    assert net.moves == moves + 1


def test_a_restarted_daemon_adopts_what_runs_and_never_starts_a_second_copy() -> None:
    net = three_nodes()
    moves = net.moves
    net.restart_daemon("a")
    net.run(5.0)
    assert net.running("web") == ["a"]
    assert net.moves == moves
    assert net.nodes["a"].up
    assert net.nodes["a"].incarnation == 2


def test_placement_is_deterministic() -> None:
    nodes = ("a", "b", "c")
    intelligent, automatic = SwitchbackType.INTELLIGENT, SwitchbackType.AUTOMATIC
    assert place(nodes, switchback=intelligent, eligible={"b", "c"}) == "b"
    assert place(nodes, switchback=intelligent, eligible={"a", "b", "c"}, holders={"c"}) == "c"
    assert place(nodes, switchback=automatic, eligible={"a", "b", "c"}, holders={"c"}) == "a"
    assert place(nodes, switchback=intelligent, eligible={"a", "b"}, holders={"c"}) == "a"
    assert place(nodes, switchback=intelligent, eligible={"b", "c"}, holders={"b", "c"}) == "b"
    assert place(nodes, switchback=automatic, eligible=set()) is None


def engine() -> ClusterEngine:
    model = make_model({"web": ("a", "b", "c")})
    node = ClusterEngine(model, make_config("abc"), "a", incarnation=1, now=10.0)
    node.start()
    return node


@pytest.mark.parametrize(
    ("event", "now", "message"),
    [
        (LocalHierarchyChanged(root="nope", phase=LocalPhase.IN), 11.0, "no hierarchy"),
        (LocalHierarchyChanged(root="web", phase="in"), 11.0, "LocalPhase"),  # type: ignore[arg-type]
        (FenceConfirmed(node="a"), 11.0, "not a peer"),
        (
            HeartbeatReceived(
                node="b",
                path="lan",
                report=PeerReport(node="c", incarnation=1, seq=1, sent_at=0, quorate=True),
            ),
            11.0,
            "carries a report for 'c'",
        ),
        (
            HeartbeatReceived(
                node="b",
                path="wifi",
                report=PeerReport(node="b", incarnation=1, seq=1, sent_at=0, quorate=True),
            ),
            11.0,
            "unknown path",
        ),
        (WitnessVoteGranted(requested_at=10.0, valid_for=1.0), 11.0, "only mode 'witness'"),
        (StorageReservationHeld(checked_at=10.0, valid_for=1.0), 11.0, "only mode 'storage'"),
        (LocalHierarchyChanged(root="web", phase=LocalPhase.IN), 9.0, "time went backwards"),
        (LocalHierarchyChanged(root="web", phase=LocalPhase.IN), math.nan, "finite"),
        ("not an event", 11.0, "not a cluster event"),
    ],
)
def test_bad_input_raises_and_changes_nothing(event: object, now: float, message: str) -> None:
    node = engine()
    before = node.snapshot()
    deadline = node.next_deadline()
    with pytest.raises(EngineUsageError, match=message):
        node.handle(event, now)  # type: ignore[arg-type]
    assert node.snapshot() == before
    assert node.next_deadline() == deadline
    assert not node.failed


def test_the_snapshot_reports_each_path_of_each_peer() -> None:
    net = three_nodes()
    net.cut_paths.add("backbone")
    net.run(2.0)
    assert net.nodes["a"].engine is not None
    snapshot = net.nodes["a"].engine.snapshot()
    assert snapshot.quorate
    assert snapshot.votes == 3
    assert snapshot.needed == 2
    assert snapshot.feeding_watchdog
    peer = snapshot.peers["b"]
    assert peer.alive
    assert peer.paths["lan"].up
    assert not peer.paths["backbone"].up
    web = snapshot.hierarchies["web"]
    assert web.phase is LocalPhase.IN
    assert web.granted
    assert web.placement == "a"
    assert net.running("web") == ["a"]  # one path down is a warning, not a failover
