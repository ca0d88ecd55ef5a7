"""The cluster wire format: sealing, opening, every drop reason, replay windows and epochs."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifekit._cluster._wire import (
    DEFAULT_WINDOW,
    HEADER,
    MAGIC,
    MAX_DATAGRAM,
    WIRE_VERSION,
    Drop,
    DropReason,
    Key,
    KeyRing,
    Message,
    MessageType,
    Opener,
    OpenerStatistics,
    Sealer,
    cluster_id,
    next_epoch,
)
from lifekit.errors import ConfigError

OLD = Key("old", bytes(range(32)))
NEW = Key("new", bytes(range(100, 140)))
RING = KeyRing([OLD])


def sealer(
    *, node: str = "alpha", epoch: int = 1, keys: KeyRing = RING, cluster: str = "prod"
) -> Sealer:
    return Sealer(keys, cluster=cluster, node=node, epoch=epoch)


def opener(*, node: str = "beta", keys: KeyRing = RING, window: int = DEFAULT_WINDOW) -> Opener:
    return Opener(keys, cluster="prod", node=node, window=window)


def accepted(result: Message | Drop) -> Message:
    assert isinstance(result, Message), result
    return result


def reason(result: Message | Drop) -> DropReason:
    assert isinstance(result, Drop), result
    return result.reason


def build(
    *,
    key: Key = OLD,
    major: int = 1,
    minor: int = 0,
    type_: int = 1,
    cluster: str = "prod",
    node: bytes = b"alpha",
    epoch: int = 1,
    sequence: int = 1,
    extra: bytes = b"",
    payload: bytes = b"{}",
) -> bytes:
    """A datagram assembled field by field as docs/cluster-wire.md describes it, signed."""
    key_id = key.id.encode()
    header_length = 40 + len(key_id) + len(node) + len(extra)
    body = b"".join(
        [
            b"LKCW",
            bytes([major, minor]),
            header_length.to_bytes(2, "big"),
            type_.to_bytes(2, "big"),
            bytes([len(key_id), len(node)]),
            len(payload).to_bytes(4, "big"),
            hashlib.sha256(b"lifekit cluster id\0" + cluster.encode()).digest()[:8],
            epoch.to_bytes(8, "big"),
            sequence.to_bytes(8, "big"),
            key_id,
            node,
            extra,
            payload,
        ]
    )
    return body + hmac.new(key.secret, body, hashlib.sha256).digest()


# ---------------------------------------------------------------------------------------------
# Format


def test_a_sealed_message_opens_with_every_field() -> None:
    datagram = sealer().seal(MessageType.STATE, b'{"web": "in_service"}')
    message = accepted(opener().open(datagram))
    assert message == Message(
        type=MessageType.STATE,
        sender="alpha",
        epoch=1,
        sequence=1,
        payload=b'{"web": "in_service"}',
        key_id="old",
        version=WIRE_VERSION,
    )
    assert type(message.type) is MessageType


def test_the_layout_is_the_documented_one() -> None:
    # Pins the format: a change here breaks every mixed-version cluster.
    assert HEADER.size == 40
    assert WIRE_VERSION == (1, 0)
    assert MAGIC == b"LKCW"
    seal = sealer(epoch=7)
    seal.seal(MessageType.HEARTBEAT, b"")
    datagram = seal.seal(MessageType.REQUEST, b'{"a": 1}')
    assert datagram == build(type_=3, epoch=7, sequence=2, payload=b'{"a": 1}')
    assert len(datagram) == 40 + len("old") + len("alpha") + 8 + 32


def test_the_reference_page_states_the_header_format() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "cluster-wire.md").read_text()
    assert f"format `{HEADER.format}` ({HEADER.size} bytes)" in page
    offsets = [int(n) for n in re.findall(r"^\| (\d+) +\|", page, flags=re.MULTILINE)]
    assert offsets == [0, 4, 5, 6, 8, 10, 11, 12, 16, 24, 32, 40]


def test_sequence_numbers_grow_from_one() -> None:
    seal = sealer()
    receiver = opener()
    numbers = [accepted(receiver.open(seal.seal(MessageType.HEARTBEAT, b""))).sequence]
    numbers += [accepted(receiver.open(seal.seal(MessageType.HEARTBEAT, b""))).sequence]
    assert numbers == [1, 2]
    assert seal.sequence == 2
    assert seal.epoch == 1


def test_cluster_id_is_a_hash_of_the_name() -> None:
    assert cluster_id("prod") == hashlib.sha256(b"lifekit cluster id\0prod").digest()[:8]
    assert cluster_id("prod") != cluster_id("prod2")
    with pytest.raises(ConfigError, match="cluster name is empty"):
        cluster_id("")


def test_a_newer_minor_with_more_header_fields_is_read() -> None:
    datagram = build(minor=3, extra=b"\x00\x01future", payload=b"[1]")
    message = accepted(opener().open(datagram))
    assert message.payload == b"[1]"
    assert message.version == (1, 3)


def test_an_unknown_message_type_is_delivered_as_a_number() -> None:
    message = accepted(opener().open(sealer().seal(4000, b"")))
    assert message.type == 4000
    assert not isinstance(message.type, MessageType)


# ---------------------------------------------------------------------------------------------
# Drops


def test_every_drop_reason_is_produced_and_counted() -> None:
    receiver = opener(window=4)
    seal = sealer(epoch=2)
    first = seal.seal(MessageType.HEARTBEAT, b"{}")
    before_restart = sealer(epoch=1).seal(MessageType.HEARTBEAT, b"{}")
    flipped = bytearray(seal.seal(MessageType.HEARTBEAT, b"{}"))
    flipped[-33] ^= 0x10  # the payload's last byte

    expected: list[tuple[bytes | bytearray, DropReason | None]] = [
        (first, None),
        (first, DropReason.DUPLICATE),  # the copy that came over the second path
        (before_restart, DropReason.STALE_EPOCH),
        (bytes(flipped), DropReason.FORGED),
        (sealer(cluster="test").seal(MessageType.HEARTBEAT, b""), DropReason.FOREIGN_CLUSTER),
        (sealer(keys=KeyRing([Key("old", b"x" * 32)])).seal(1, b""), DropReason.FORGED),
        (sealer(keys=KeyRing([NEW])).seal(1, b""), DropReason.UNKNOWN_KEY),
        (first[:-1], DropReason.MALFORMED),
        (b"", DropReason.MALFORMED),
        (b"XKCW" + first[4:], DropReason.MALFORMED),
        (build(epoch=0), DropReason.MALFORMED),
        (first[:4] + bytes([WIRE_VERSION[0] + 1]) + first[5:], DropReason.VERSION),
        (b"LKCW" + bytes([2, 0]), DropReason.VERSION),
        (bytes(MAX_DATAGRAM + 1), DropReason.OVERSIZE),
        (sealer(node="beta").seal(1, b""), DropReason.REFLECTED),
    ]
    expected += [(seal.seal(MessageType.HEARTBEAT, b""), None) for _ in range(5)]
    expected += [(first, DropReason.REPLAYED)]  # now 5 behind the highest, window 4

    for datagram, why in expected:
        result = receiver.open(datagram)
        if why is None:
            accepted(result)
        else:
            assert reason(result) == why, datagram

    assert receiver.statistics() == OpenerStatistics(
        accepted=6,
        malformed=4,
        oversize=1,
        version=2,
        foreign_cluster=1,
        unknown_key=1,
        forged=2,
        reflected=1,
        replayed=1,
        duplicate=1,
        stale_epoch=1,
    )
    assert receiver.statistics().dropped == 15
    assert {reason.value for reason in DropReason} == {
        field.name for field in attrs.fields(OpenerStatistics) if field.name != "accepted"
    }


def test_statistics_are_a_frozen_record() -> None:
    stats = opener().statistics()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.forged = 1  # type: ignore[misc]


def test_oversize_is_refused_before_anything_else() -> None:
    receiver = Opener(RING, cluster="prod", node="beta", max_datagram=100)
    valid = sealer().seal(MessageType.STATE, b"x" * 30)
    assert len(valid) > 100
    assert reason(receiver.open(valid)) is DropReason.OVERSIZE


def test_drops_name_the_sender_and_the_fix() -> None:
    receiver = opener()
    receiver.open(sealer(epoch=2).seal(1, b""))
    stale = receiver.open(sealer(epoch=1).seal(1, b""))
    assert isinstance(stale, Drop)
    assert stale.sender == "alpha"
    assert "epoch 1" in stale.detail
    assert "set its epoch above 2" in stale.detail
    unknown = receiver.open(sealer(keys=KeyRing([NEW])).seal(1, b""))
    assert isinstance(unknown, Drop)
    assert "'new'" in unknown.detail
    assert "rotation" in unknown.detail


def test_a_refused_datagram_leaves_the_replay_state_alone() -> None:
    receiver = opener()
    # Forged (another secret) with a far future epoch: must not make epoch 1 stale.
    forger = sealer(epoch=99, keys=KeyRing([Key("old", b"f" * 32)]))
    assert reason(receiver.open(forger.seal(1, b""))) is DropReason.FORGED
    accepted(receiver.open(sealer(epoch=1).seal(1, b"")))


@given(bit=st.integers(min_value=0))
def test_no_single_bit_flip_of_a_valid_datagram_is_accepted(bit: int) -> None:
    datagram = sealer().seal(MessageType.HEARTBEAT, b'{"up": true}')
    bit %= len(datagram) * 8
    flipped = bytearray(datagram)
    flipped[bit // 8] ^= 1 << (bit % 8)
    receiver = opener()
    assert isinstance(receiver.open(flipped), Drop)
    accepted(receiver.open(datagram))


@given(cut=st.integers(min_value=0))
def test_every_truncation_is_malformed(cut: int) -> None:
    datagram = sealer().seal(MessageType.HEARTBEAT, b'{"up": true}')
    cut %= len(datagram)
    assert reason(opener().open(datagram[:cut])) is DropReason.MALFORMED


# ---------------------------------------------------------------------------------------------
# Replay window and epochs


def test_reordering_within_the_window_is_accepted() -> None:
    seal = sealer()
    datagrams = [seal.seal(MessageType.STATE, str(n).encode()) for n in range(DEFAULT_WINDOW)]
    receiver = opener()
    payloads = [accepted(receiver.open(d)).payload for d in reversed(datagrams)]
    assert payloads == [str(n).encode() for n in reversed(range(DEFAULT_WINDOW))]
    assert {reason(receiver.open(d)) for d in datagrams} == {DropReason.DUPLICATE}


def test_one_beyond_the_window_is_replayed() -> None:
    seal = sealer()
    datagrams = [seal.seal(MessageType.STATE, b"") for _ in range(DEFAULT_WINDOW + 2)]
    receiver = opener()
    accepted(receiver.open(datagrams[-1]))
    # Ages 0..127 behind the highest are inside a 128-message window.
    assert reason(receiver.open(datagrams[0])) is DropReason.REPLAYED  # 129 behind
    assert reason(receiver.open(datagrams[1])) is DropReason.REPLAYED  # 128 behind
    accepted(receiver.open(datagrams[2]))  # 127 behind
    assert reason(receiver.open(datagrams[2])) is DropReason.DUPLICATE


@given(order=st.lists(st.integers(min_value=0, max_value=15), max_size=60))
def test_any_reordering_within_the_window_accepts_each_sequence_once(order: list[int]) -> None:
    seal = sealer()
    datagrams = [seal.seal(MessageType.HEARTBEAT, bytes([n])) for n in range(16)]
    receiver = opener(window=16)
    seen: set[int] = set()
    for index in order:
        result = receiver.open(datagrams[index])
        if index in seen:
            assert reason(result) is DropReason.DUPLICATE
        else:
            assert accepted(result).payload == bytes([index])
            seen.add(index)


@given(
    window=st.integers(min_value=1, max_value=10),
    sequences=st.lists(st.integers(min_value=1, max_value=40), max_size=80),
)
def test_the_window_matches_a_set_of_everything_seen(window: int, sequences: list[int]) -> None:
    # The opener keeps a bitmap; the model keeps every number: they must agree.
    receiver = opener(window=window)
    seen: set[int] = set()
    for sequence in sequences:
        result = receiver.open(build(sequence=sequence))
        highest = max(seen, default=0)
        if sequence in seen and highest - sequence < window:
            assert reason(result) is DropReason.DUPLICATE
        elif seen and highest - sequence >= window:
            assert reason(result) is DropReason.REPLAYED
        else:
            accepted(result)
            seen.add(sequence)


def test_a_message_from_before_the_sender_restarted_is_stale() -> None:
    receiver = opener()
    before = sealer(epoch=1).seal(MessageType.HEARTBEAT, b"")
    accepted(receiver.open(sealer(epoch=1).seal(MessageType.HEARTBEAT, b"")))
    accepted(receiver.open(sealer(epoch=2).seal(MessageType.HEARTBEAT, b"")))
    assert reason(receiver.open(before)) is DropReason.STALE_EPOCH


def test_senders_are_tracked_apart() -> None:
    receiver = opener()
    accepted(receiver.open(sealer(node="alpha", epoch=5).seal(1, b"")))
    accepted(receiver.open(sealer(node="gamma", epoch=1).seal(1, b"")))
    assert sorted(receiver.known_senders()) == ["alpha", "gamma"]


def test_marks_survive_a_restart_of_the_receiver() -> None:
    old_epoch = sealer(epoch=1)
    captured_old = old_epoch.seal(MessageType.HEARTBEAT, b"")
    seal = sealer(epoch=2)
    captured = [seal.seal(MessageType.HEARTBEAT, b"") for _ in range(3)]
    receiver = opener()
    accepted(receiver.open(captured_old))
    for datagram in captured:
        accepted(receiver.open(datagram))

    saved = json.dumps(receiver.export_marks())
    assert json.loads(saved) == {"alpha": {"epoch": 2, "sequence": 3}}

    # Without the marks a restarted receiver would take the captured datagrams again.
    assert isinstance(opener().open(captured_old), Message)

    restarted = opener()
    restarted.import_marks(json.loads(saved))
    assert reason(restarted.open(captured_old)) is DropReason.STALE_EPOCH
    assert {reason(restarted.open(d)) for d in captured} == {DropReason.REPLAYED}
    assert accepted(restarted.open(seal.seal(MessageType.HEARTBEAT, b""))).sequence == 4
    assert restarted.export_marks() == {"alpha": {"epoch": 2, "sequence": 4}}
    accepted(restarted.open(sealer(epoch=3).seal(MessageType.HEARTBEAT, b"")))


def test_importing_marks_never_lowers_what_was_seen() -> None:
    receiver = opener()
    accepted(receiver.open(sealer(epoch=5).seal(1, b"")))
    receiver.import_marks({"alpha": {"epoch": 3, "sequence": 100}})
    assert receiver.export_marks() == {"alpha": {"epoch": 5, "sequence": 1}}
    receiver.import_marks({"alpha": {"epoch": 5, "sequence": 9}})
    assert receiver.export_marks() == {"alpha": {"epoch": 5, "sequence": 9}}


@pytest.mark.parametrize(
    "marks",
    [
        {"alpha": {"epoch": 0}},
        {"alpha": {"epoch": "2"}},
        {"alpha": {"epoch": True}},
        {"alpha": {"epoch": 2, "sequence": -1}},
        {"alpha": {"epoch": 2**64}},
        {"alpha": [2, 3]},
    ],
)
def test_corrupt_marks_are_refused_before_any_change(marks: dict[str, object]) -> None:
    receiver = opener()
    good = {"gamma": {"epoch": 4, "sequence": 1}}
    with pytest.raises(ConfigError, match="replay marks: sender 'alpha'"):
        receiver.import_marks({**good, **marks})  # type: ignore[dict-item]
    assert receiver.export_marks() == {}


def test_forget_accepts_a_sender_whose_epochs_restarted() -> None:
    receiver = opener()
    accepted(receiver.open(sealer(epoch=9).seal(1, b"")))
    assert reason(receiver.open(sealer(epoch=1).seal(1, b""))) is DropReason.STALE_EPOCH
    receiver.forget("alpha")
    accepted(receiver.open(sealer(epoch=1).seal(1, b"")))


def test_next_epoch() -> None:
    assert next_epoch(None) == 1
    assert next_epoch(41) == 42
    for corrupt in (0, -3, 2**64 - 1):
        with pytest.raises(ValueError, match="epoch file is corrupt"):
            next_epoch(corrupt)


# ---------------------------------------------------------------------------------------------
# Keys and rotation


class Node:
    """One node's sealer and opener, sharing a key ring as the daemon would."""

    def __init__(self, name: str, keys: list[Key]) -> None:
        self.name = name
        self.sealer = Sealer(KeyRing(keys), cluster="prod", node=name, epoch=1)
        self.opener = Opener(KeyRing(keys), cluster="prod", node=name)

    def load(self, keys: list[Key]) -> None:
        self.sealer.use_keys(KeyRing(keys))
        self.opener.use_keys(KeyRing(keys))

    def send(self, to: Node) -> Message | Drop:
        return to.opener.open(self.sealer.seal(MessageType.HEARTBEAT, b""))


def test_key_rotation_works_with_nodes_one_step_apart() -> None:
    steps = [[OLD], [OLD, NEW], [NEW, OLD], [NEW]]
    a, b = Node("a", steps[0]), Node("b", steps[0])
    signed_by = []
    for step in range(1, len(steps)):
        # a reloads the key file first, b is still one step behind; then b catches up.
        for node in (a, b):
            node.load(steps[step])
            signed_by += [accepted(a.send(b)).key_id, accepted(b.send(a)).key_id]
    # (a to b, b to a) after a's reload, then after b's, for each of the three steps.
    assert signed_by == [
        *("old", "old", "old", "old"),
        *("new", "old", "new", "new"),
        *("new", "new", "new", "new"),
    ]


def test_skipping_a_rotation_step_is_refused_as_unknown_key() -> None:
    a, b = Node("a", [NEW, OLD]), Node("b", [OLD])
    assert reason(a.send(b)) is DropReason.UNKNOWN_KEY
    accepted(b.send(a))


def test_key_ring_checks() -> None:
    assert KeyRing([OLD, NEW]).signing == OLD
    assert KeyRing([OLD, NEW]).get("new") == NEW
    assert KeyRing([OLD]).get("new") is None
    assert OLD.secret.hex() not in repr(OLD)
    with pytest.raises(ValueError, match="at least one key"):
        KeyRing([])
    with pytest.raises(ValueError, match=r"duplicate key ids \['old'\]"):
        KeyRing([OLD, Key("old", b"y" * 32)])
    with pytest.raises(ValueError, match="is 31 bytes long; use at least 32"):
        Key("short", b"s" * 31)
    with pytest.raises(ValueError, match="invalid key id"):
        Key("no spaces", b"s" * 32)


# ---------------------------------------------------------------------------------------------
# Sealer limits


def test_sealer_refuses_what_the_wire_cannot_carry() -> None:
    seal = sealer()
    with pytest.raises(ValueError, match="split it into several messages"):
        seal.seal(MessageType.STATE, bytes(MAX_DATAGRAM))
    with pytest.raises(ValueError, match="16 bits"):
        seal.seal(70_000, b"")
    assert seal.sequence == 0
    with pytest.raises(ValueError, match="out of range"):
        sealer(epoch=0)
    with pytest.raises(ConfigError, match="1 to 255 bytes"):
        sealer(node="n" * 256)
    with pytest.raises(ValueError, match="window 0 is too small"):
        opener(window=0)


def test_the_largest_datagram_fits() -> None:
    seal = sealer()
    overhead = HEADER.size + len("old") + len("alpha") + 32
    datagram = seal.seal(MessageType.STATE, bytes(MAX_DATAGRAM - overhead))
    assert len(datagram) == MAX_DATAGRAM
    accepted(opener().open(datagram))
    assert struct.unpack_from("!I", datagram, 12) == (MAX_DATAGRAM - overhead,)
