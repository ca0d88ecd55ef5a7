"""Quorum: majority with 3 and 5 nodes, the witness, storage, mode none, and the arithmetic."""

from __future__ import annotations

import math

import pytest

from lifekit._cluster import (
    ClusterEngine,
    ExternalLease,
    QuorumGained,
    QuorumLost,
    QuorumMode,
    Silence,
    StorageReservationHeld,
    StorageReservationLost,
    UnsafeQuorumMode,
    Witness,
    lease_expiry,
    needed_votes,
    out_of_service_since,
)
from tests.unit.test_cluster_net import WITNESS, Net, make_config, make_model


def quorate(net: Net) -> set[str]:
    return {name for name, node in net.nodes.items() if node.engine and node.engine.quorate}


def test_needed_votes_is_strictly_more_than_half() -> None:
    assert [needed_votes(total) for total in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def test_quorum_is_a_lease_that_ends_at_the_needed_latest_vote() -> None:
    assert lease_expiry([math.inf, 5.0, 3.0], 2) == 5.0
    assert lease_expiry([math.inf, 5.0, 3.0], 3) == 3.0
    assert lease_expiry([math.inf], 2) == -math.inf


def test_out_of_service_since_finds_the_first_time_a_majority_is_silent() -> None:
    silences = [Silence(2.0, 10.0), Silence(4.0, 6.0), Silence(7.0, 9.0)]
    assert out_of_service_since(silences, needed=2, after=0.0) == 4.0
    assert out_of_service_since(silences, needed=2, after=6.5) == 7.0
    assert out_of_service_since(silences, needed=3, after=0.0) is None
    # The voter's vote was set at 9.5: only silence after that proves the claim dead.
    assert out_of_service_since(silences, needed=2, after=9.5) is None


@pytest.mark.parametrize(
    ("names", "minority", "majority"),
    [("abc", "a", "bc"), ("abcde", "ab", "cde")],
)
def test_majority_side_stays_quorate_and_takes_over(
    names: str, minority: str, majority: str
) -> None:
    model = make_model({"web": tuple(names)})
    net = Net(model, make_config(names))
    net.run(3.0)
    assert quorate(net) == set(names)
    assert net.running("web") == ["a"]
    net.partition(dict.fromkeys(minority, 1))
    net.run(1.0)
    assert quorate(net) == set(majority)  # the minority lost quorum after ~ the deadtime
    net.run(5.0)
    assert net.running("web") == [majority[0]]
    assert net.max_in_service["web"] == 1


def test_two_nodes_without_an_arbiter_both_stop_serving_on_a_split() -> None:
    model = make_model({"web": ("a", "b")})
    net = Net(model, make_config("ab"))
    net.run(3.0)
    assert net.running("web") == ["a"]
    net.partition({"b": 1})
    net.run(6.0)
    assert quorate(net) == set()
    assert net.in_service("web") == []


def test_a_witness_lets_exactly_one_side_of_a_two_node_split_serve() -> None:
    model = make_model({"web": ("a", "b"), "db": ("b", "a")})
    net = Net(model, make_config("ab", quorum=QuorumMode.WITNESS))
    net.run(3.0)
    assert net.running("web") == ["a"]
    assert net.running("db") == ["b"]
    net.partition({"b": 1})
    net.witness_reach = {"a", "b"}  # both halves still reach the witness
    net.run(10.0)
    winner = net.witness.holder(net.now)
    assert winner in ("a", "b")
    assert quorate(net) == {winner}
    assert net.running("web") == [winner]
    assert net.running("db") == [winner]
    assert net.max_in_service == {"web": 1, "db": 1}


def test_while_the_witness_is_down_only_a_plain_majority_keeps_quorum() -> None:
    model = make_model({"web": ("a", "b")})
    net = Net(model, make_config("ab", quorum=QuorumMode.WITNESS))
    net.witness_up = False
    net.run(3.0)
    assert quorate(net) == {"a", "b"}  # 2 of 3 votes without the witness
    assert net.running("web") == ["a"]
    net.partition({"b": 1})
    net.run(6.0)
    assert quorate(net) == set()
    assert net.in_service("web") == []
    net.witness_up = True
    net.witness_reach = {"b"}
    net.run(6.0)
    assert quorate(net) == {"b"}
    assert net.running("web") == ["b"]


def test_the_witness_grants_one_node_per_cluster_until_its_lease_expires() -> None:
    witness = Witness(lease=2.0)
    first = witness.grant("a", 0.0)
    assert first is not None
    assert first.expires_at == 2.0
    assert witness.grant("b", 1.9) is None
    renewed = witness.grant("a", 1.95)
    assert renewed is not None
    assert renewed.expires_at == 3.95
    assert witness.grant("b", 3.9) is None
    assert witness.grant("b", 3.95) is not None
    assert witness.holder(3.96) == "b"
    assert witness.grant("a", 3.96, cluster="other") is not None  # one witness, two clusters
    with pytest.raises(ValueError, match="backwards"):
        witness.grant("a", 3.0)
    with pytest.raises(ValueError, match="positive"):
        Witness(lease=0)


def test_the_holder_counts_the_external_vote_conservatively() -> None:
    lease = ExternalLease(stretch=1.1)
    lease.granted(10.0, 1.1, now=10.2)  # asked at 10.0 for 1.1 s: counts until 11.0
    assert lease.valid(10.9)
    assert not lease.valid(11.0)
    assert lease.held_since == 10.2
    lease.granted(10.8, 1.1, now=10.9)  # renewed while valid: the same holding
    assert lease.held_since == 10.2
    assert lease.valid_until == pytest.approx(11.8)
    assert lease.expire(11.8)
    lease.granted(12.0, 1.1, now=12.1)
    assert lease.held_since == 12.1  # after a gap, a new holding
    lease.granted(0.0, 1.1, now=13.5)  # an answer that arrives too late counts for nothing
    assert not lease.valid(13.5)
    lease.lost()
    assert lease.held_since is None


def test_storage_mode_the_reservation_holder_breaks_the_tie() -> None:
    model = make_model({"web": ("a", "b")})
    config = make_config("ab", quorum=QuorumMode.STORAGE)
    engine = ClusterEngine(model, config, "a", incarnation=1, now=0.0)
    engine.start()
    assert not engine.quorate
    out = engine.handle(StorageReservationHeld(checked_at=0.0, valid_for=1.0), 0.1)
    assert QuorumGained(at=0.1, votes=2, needed=2) in out
    out = engine.handle(StorageReservationLost(), 0.2)
    assert any(isinstance(item, QuorumLost) for item in out)
    assert not engine.quorate
    out = engine.handle(StorageReservationHeld(checked_at=0.3, valid_for=1.0), 0.3)
    assert any(isinstance(item, QuorumGained) for item in out)
    # The hook must renew it: the lease ends at 0.3 + 1.0 / 1.1 without news.
    out = engine.handle_timer(0.3 + 1.0 / 1.1)
    assert any(isinstance(item, QuorumLost) for item in out)


def test_mode_none_warns_and_lets_both_sides_serve() -> None:
    model = make_model({"web": ("a", "b")})
    config = make_config("ab", quorum=QuorumMode.NONE, unsafe_no_quorum=True)
    net = Net(model, config, check=False)
    assert any(isinstance(out, UnsafeQuorumMode) for out in net.nodes["a"].outputs)
    net.run(3.0)
    assert net.running("web") == ["a"]
    net.partition({"b": 1})
    net.run(2.0)  # a deadtime (0.6 s) and the action: b takes over, a keeps it: split brain
    assert net.running("web") == ["a", "b"]
    net.heal()
    net.run(2.0)  # healed: b hears a has it and takes it out (a is first in the list)
    assert net.running("web") == ["a"]


def test_the_witness_name_is_not_a_node_name() -> None:
    assert WITNESS not in "abcde"
