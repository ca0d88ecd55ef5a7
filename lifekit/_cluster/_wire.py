"""The cluster's wire format: sealing and opening authenticated datagrams.

This module owns the bytes nodes exchange over their communication paths, and the rules that
decide whether a received datagram is believed: framing, versions, the cluster id, the key
ring, the HMAC tag and replay protection. It is pure: no sockets, no clock, no files. The
daemon reads the key file (:mod:`lifekit._cluster._keys`), persists the boot epoch and the
replay marks, and moves the bytes; ``docs/cluster-wire.md`` documents the layout.

Theory of operation
-------------------
A node seals each message once (:meth:`Sealer.seal`) and sends the same bytes on every path.
Each datagram names its sender, the sender's *boot epoch* (a number the daemon increments at
every start and never lowers, :func:`next_epoch`) and a sequence number that grows within the
epoch. The receiver's :class:`Opener` checks, in this fixed order and stopping at the first
failure: size, magic and major version, structure, cluster id, key id, HMAC tag (constant
time), sender, and then freshness. Nothing about the sender is remembered before the tag is
verified, so forged datagrams cannot disturb the replay state.

Freshness, per sender: a datagram of an epoch older than the highest seen is ``stale_epoch``
(a heartbeat captured before the peer restarted). Within the current epoch a sliding window
(RFC 4303 section 3.4.3, like IPsec) accepts each sequence number once, in any order, as long
as it is within :data:`DEFAULT_WINDOW` of the highest seen: paths reorder, and the second copy
of a message that came over two paths is a ``duplicate``, counted apart from a ``replayed``
one older than the window. The highest epoch and sequence per sender are exported as plain
data (:meth:`Opener.export_marks`) so that, restored after the receiver restarts, a replay of
anything it had already seen is still refused.

Rolling upgrades: bytes 0-5 (magic, major, minor) never move. A receiver drops a different
major as ``version`` and reads a newer minor of its own major, skipping the header fields it
does not know (the header carries its own length). A minor may add header fields and message
types, never change the meaning of existing ones.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from lifekit.errors import ConfigError, ConfigIssue

__all__ = [
    "DEFAULT_WINDOW",
    "HEADER",
    "MAGIC",
    "MAX_DATAGRAM",
    "MIN_KEY_BYTES",
    "TAG_BYTES",
    "WIRE_VERSION",
    "Drop",
    "DropReason",
    "Key",
    "KeyRing",
    "Message",
    "MessageType",
    "Opener",
    "OpenerStatistics",
    "Sealer",
    "cluster_id",
    "next_epoch",
]

#: The first four bytes of every lifekit cluster datagram.
MAGIC: Final = b"LKCW"

#: The wire format this module writes: ``(major, minor)``.
WIRE_VERSION: Final = (1, 0)

#: The fixed part of the header, in network byte order: magic, major, minor, header length,
#: message type, key id length, sender name length, payload length, cluster id, epoch,
#: sequence. The key id and the sender's name follow it; see ``docs/cluster-wire.md``.
HEADER: Final = struct.Struct("!4sBBHHBBI8sQQ")

#: The bytes of the HMAC-SHA256 tag that ends every datagram.
TAG_BYTES: Final = 32

#: The largest datagram sent or read: the largest UDP payload over IPv4.
MAX_DATAGRAM: Final = 65_507

#: How many sequence numbers below the highest seen are still accepted (once each).
DEFAULT_WINDOW: Final = 128

#: The shortest key accepted, in bytes (the HMAC-SHA256 output size; RFC 2104 section 3).
MIN_KEY_BYTES: Final = 32

_MAX_U64: Final = 2**64 - 1
_PREFIX = struct.Struct("!4sBB")
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_KEY_ID_RULE = "1 to 32 characters: letters, digits, '.', '_', '-', not starting with a symbol"


class MessageType(enum.IntEnum):
    """What a message carries. Values are part of the wire format: never renumber them.

    A newer minor version may add types; an :class:`Opener` delivers a type it does not know
    as a plain ``int`` in :attr:`Message.type`, for the daemon to ignore.
    """

    HEARTBEAT = 1
    STATE = 2
    REQUEST = 3
    REPLY = 4
    CONFIG = 5


class DropReason(enum.StrEnum):
    """Why an :class:`Opener` refused a datagram. Values are a monitoring contract."""

    #: Too short, wrong magic, inconsistent lengths, undecodable names, zero epoch/sequence.
    MALFORMED = "malformed"
    #: Longer than the opener's limit (checked before anything else).
    OVERSIZE = "oversize"
    #: Another major version of the wire format.
    VERSION = "version"
    #: Sent by a node of another cluster (another cluster name).
    FOREIGN_CLUSTER = "foreign_cluster"
    #: Signed with a key id this node's key file does not list.
    UNKNOWN_KEY = "unknown_key"
    #: The HMAC tag does not match: altered in transit, or signed with another secret.
    FORGED = "forged"
    #: Authentic and names this node as sender: a reflected copy, or multicast loopback.
    REFLECTED = "reflected"
    #: Authentic, of the current epoch, but older than the window or the restored mark.
    REPLAYED = "replayed"
    #: Authentic and already accepted (within the window): typically the copy from another path.
    DUPLICATE = "duplicate"
    #: Authentic, from an epoch older than the sender's highest seen (sent before it restarted).
    STALE_EPOCH = "stale_epoch"


@attrs.frozen
class Key:
    """One cluster key: its id (sent in clear in every datagram) and its secret.

    :param id: the key's name in the key file.
    :param secret: at least :data:`MIN_KEY_BYTES` bytes; never shown in ``repr``.
    """

    id: str
    secret: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.id):
            raise ValueError(f"invalid key id {self.id!r}: expected {_KEY_ID_RULE}")
        if len(self.secret) < MIN_KEY_BYTES:
            raise ValueError(
                f"key {self.id!r} is {len(self.secret)} bytes long; use at least "
                f"{MIN_KEY_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
            )


def _key_tuple(keys: Iterable[Key]) -> tuple[Key, ...]:
    return tuple(keys)


@attrs.frozen
class KeyRing:
    """The keys of a key file: the first signs, all verify.

    Rotation without downtime, each step done on every node before the next one starts:
    (1) add the new key as a second line, (2) move it first, (3) remove the old one.

    :param keys: in the key file's order; ids unique.
    """

    keys: tuple[Key, ...] = attrs.field(converter=_key_tuple)

    def __attrs_post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key ring needs at least one key")
        ids = [key.id for key in self.keys]
        duplicates = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
        if duplicates:
            raise ValueError(f"duplicate key ids {duplicates}: give each key its own id")

    @property
    def signing(self) -> Key:
        """The key that signs what this node sends (the first one)."""
        return self.keys[0]

    def get(self, key_id: str) -> Key | None:
        """The key called ``key_id``, or ``None``."""
        for key in self.keys:
            if key.id == key_id:
                return key
        return None


@attrs.frozen
class Message:
    """A datagram that passed every check.

    :param type: a :class:`MessageType`, or a plain ``int`` for a type of a newer minor.
    :param sender: the sending node's name.
    :param epoch: the sender's boot epoch.
    :param sequence: its sequence number within the epoch.
    :param payload: the bytes the sender sealed (JSON, by convention of the daemon).
    :param key_id: the key that signed it (shows rotation progress).
    :param version: the sender's ``(major, minor)`` wire version.
    """

    type: int
    sender: str
    epoch: int
    sequence: int
    payload: bytes = attrs.field(repr=False)
    key_id: str
    version: tuple[int, int]


@attrs.frozen
class Drop:
    """A datagram an :class:`Opener` refused.

    :param reason: why.
    :param detail: a sentence for the log: the value found, and what would fix it when an
        operator can (a key file, a version, a state directory).
    :param sender: the sender's name when the datagram got far enough to name one (it is only
        authenticated for the reasons that come after the tag check).
    """

    reason: DropReason
    detail: str
    sender: str | None = None


@attrs.frozen
class OpenerStatistics:
    """Counters of an :class:`Opener` since it was made (not persisted).

    One field per :class:`DropReason` value, plus the datagrams accepted.
    """

    accepted: int
    malformed: int
    oversize: int
    version: int
    foreign_cluster: int
    unknown_key: int
    forged: int
    reflected: int
    replayed: int
    duplicate: int
    stale_epoch: int

    @property
    def dropped(self) -> int:
        """Every datagram refused, for any reason."""
        return sum(getattr(self, reason.value) for reason in DropReason)


def cluster_id(name: str) -> bytes:
    """The 8-byte id that stands for the cluster called ``name`` on the wire.

    A hash, so that two clusters sharing a network (or a key, by mistake) never mix their
    messages, whatever their names' lengths.
    """
    if not name:
        raise ConfigError([ConfigIssue("cluster", "the cluster name is empty", value=name)])
    return hashlib.sha256(b"lifekit cluster id\0" + name.encode()).digest()[:8]


def next_epoch(previous: int | None) -> int:
    """The boot epoch a starting daemon uses, given the one it persisted last time.

    The daemon stores the result *before* it sends anything, so that a crash right after
    start still moves the epoch forward.

    :param previous: the stored epoch, or ``None`` on the node's very first start.
    """
    if previous is None:
        return 1
    if not 1 <= previous < _MAX_U64:
        raise ValueError(
            f"stored boot epoch {previous} is out of range 1..{_MAX_U64 - 1}; the epoch file "
            "is corrupt: restore it, or set it above every epoch the peers have seen"
        )
    return previous + 1


def _node_bytes(node: str) -> bytes:
    encoded = node.encode()
    if not 1 <= len(encoded) <= 255:
        raise ConfigError(
            [
                ConfigIssue(
                    "node",
                    "a node name must be 1 to 255 bytes in UTF-8",
                    value=node,
                    expected="set [node] name to 1 to 128 letters, digits, '.', '_' or '-'",
                )
            ]
        )
    return encoded


def _tag(secret: bytes, data: bytes | memoryview) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


class Sealer:
    """Turns messages into authenticated datagrams for one node's boot epoch.

    Seal each message once and send the same bytes on every path: receivers count the
    extra copies as duplicates.

    :param keys: the key ring; its first key signs.
    :param cluster: the cluster's name.
    :param node: this node's name.
    :param epoch: this start's boot epoch (:func:`next_epoch`).
    :param max_datagram: the largest datagram to produce.
    """

    def __init__(
        self,
        keys: KeyRing,
        *,
        cluster: str,
        node: str,
        epoch: int,
        max_datagram: int = MAX_DATAGRAM,
    ) -> None:
        if not 1 <= epoch <= _MAX_U64:
            raise ValueError(f"boot epoch {epoch} is out of range 1..{_MAX_U64}")
        self._keys = keys
        self._cluster_id = cluster_id(cluster)
        self._node = _node_bytes(node)
        self._epoch = epoch
        self._sequence = 0
        self._max_datagram = max_datagram

    @property
    def epoch(self) -> int:
        """The boot epoch every datagram carries."""
        return self._epoch

    @property
    def sequence(self) -> int:
        """The sequence number of the last datagram sealed (0 before the first)."""
        return self._sequence

    def use_keys(self, keys: KeyRing) -> None:
        """Sign with ``keys`` from now on (the key file was reloaded during a rotation)."""
        self._keys = keys

    def seal(self, type: MessageType | int, payload: bytes) -> bytes:
        """A datagram carrying ``payload``, with the next sequence number.

        :raises ValueError: the datagram would exceed ``max_datagram`` (split the payload), or
            the epoch's sequence numbers are exhausted (restart with a new epoch).
        """
        key = self._keys.signing
        key_id = key.id.encode()
        header_length = HEADER.size + len(key_id) + len(self._node)
        size = header_length + len(payload) + TAG_BYTES
        if size > self._max_datagram:
            raise ValueError(
                f"a {len(payload)}-byte payload makes a {size}-byte datagram, over the "
                f"{self._max_datagram}-byte limit; split it into several messages"
            )
        if not 0 <= type <= 0xFFFF:
            raise ValueError(f"message type {type} does not fit the wire's 16 bits")
        if self._sequence >= _MAX_U64:
            raise ValueError("sequence numbers of this boot epoch are exhausted; restart the node")
        self._sequence += 1
        header = HEADER.pack(
            MAGIC,
            *WIRE_VERSION,
            header_length,
            type,
            len(key_id),
            len(self._node),
            len(payload),
            self._cluster_id,
            self._epoch,
            self._sequence,
        )
        body = b"".join((header, key_id, self._node, payload))
        return body + _tag(key.secret, body)


@attrs.define
class _Peer:
    """What an opener remembers of one sender."""

    epoch: int
    #: The highest sequence number accepted in ``epoch``.
    highest: int
    #: Bit ``i`` set: sequence ``highest - i`` was accepted.
    seen: int
    #: Sequence numbers up to this one are refused: they were seen before a restart.
    floor: int


class Opener:
    """Checks received datagrams and counts the ones it refuses.

    One opener serves every path of a node, so that copies of one message that arrive over
    several paths are recognised.

    :param keys: the key ring; every key in it verifies.
    :param cluster: the cluster's name.
    :param node: this node's name (datagrams naming it as sender are refused as reflected).
    :param window: how far below the highest sequence number seen a message is still
        accepted (once): the reordering tolerated between paths.
    :param max_datagram: longer datagrams are refused before any other work.
    """

    def __init__(
        self,
        keys: KeyRing,
        *,
        cluster: str,
        node: str,
        window: int = DEFAULT_WINDOW,
        max_datagram: int = MAX_DATAGRAM,
    ) -> None:
        if window < 1:
            raise ValueError(f"replay window {window} is too small; use at least 1 (default 128)")
        self._keys = keys
        self._cluster = cluster
        self._cluster_id = cluster_id(cluster)
        self._node = node
        _node_bytes(node)
        self._window = window
        self._max_datagram = max_datagram
        self._peers: dict[str, _Peer] = {}
        self._accepted = 0
        self._drops = dict.fromkeys(DropReason, 0)

    def use_keys(self, keys: KeyRing) -> None:
        """Verify with ``keys`` from now on (the key file was reloaded during a rotation)."""
        self._keys = keys

    def statistics(self) -> OpenerStatistics:
        """The counters so far."""
        return OpenerStatistics(
            accepted=self._accepted, **{reason.value: n for reason, n in self._drops.items()}
        )

    def open(self, datagram: bytes | bytearray | memoryview) -> Message | Drop:
        """Check ``datagram``; the message it carries, or why it is refused.

        Refused datagrams change nothing but the counters.
        """
        result = self._open(memoryview(datagram))
        if isinstance(result, Drop):
            self._drops[result.reason] += 1
        else:
            self._accepted += 1
        return result

    def _open(self, data: memoryview) -> Message | Drop:
        size = len(data)
        if size > self._max_datagram:
            return Drop(
                DropReason.OVERSIZE, f"{size}-byte datagram exceeds {self._max_datagram} bytes"
            )
        if size < _PREFIX.size:
            return Drop(DropReason.MALFORMED, f"{size}-byte datagram is too short")
        magic, major, minor = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            return Drop(DropReason.MALFORMED, f"magic {magic!r} is not {MAGIC!r}")
        if major != WIRE_VERSION[0]:
            return Drop(
                DropReason.VERSION,
                f"wire version {major}.{minor} is not {WIRE_VERSION[0]}.x; run the same "
                "major version of lifekit on every node",
            )
        if size < HEADER.size + TAG_BYTES:
            return Drop(DropReason.MALFORMED, f"{size}-byte datagram is too short")
        (
            _magic,
            _major,
            _minor,
            header_length,
            type_,
            key_id_length,
            node_length,
            payload_length,
            cluster,
            epoch,
            sequence,
        ) = HEADER.unpack_from(data)
        names_end = HEADER.size + key_id_length + node_length
        if (
            not key_id_length
            or not node_length
            or header_length < names_end
            or header_length + payload_length + TAG_BYTES != size
        ):
            return Drop(
                DropReason.MALFORMED,
                f"lengths (header {header_length}, key id {key_id_length}, node "
                f"{node_length}, payload {payload_length}) do not add up to {size} bytes",
            )
        try:
            key_id = bytes(data[HEADER.size : HEADER.size + key_id_length]).decode("ascii")
            sender = bytes(data[HEADER.size + key_id_length : names_end]).decode()
        except UnicodeDecodeError:
            return Drop(DropReason.MALFORMED, "key id or sender name is not valid text")
        if not epoch or not sequence:
            return Drop(DropReason.MALFORMED, "epoch and sequence start at 1", sender=sender)
        if cluster != self._cluster_id:
            return Drop(
                DropReason.FOREIGN_CLUSTER,
                f"from {sender!r} of another cluster (id {cluster.hex()}, not "
                f"{self._cluster_id.hex()}: {self._cluster!r}); check the cluster name in "
                "its configuration, or separate the networks",
                sender=sender,
            )
        key = self._keys.get(key_id)
        if key is None:
            return Drop(
                DropReason.UNKNOWN_KEY,
                f"from {sender!r} signed with key {key_id!r}, which the key file does not "
                "list; finish each key rotation step on every node before the next one",
                sender=sender,
            )
        body = data[: size - TAG_BYTES]
        if not hmac.compare_digest(_tag(key.secret, body), data[size - TAG_BYTES :]):
            return Drop(
                DropReason.FORGED,
                f"claims to be from {sender!r} with key {key_id!r} but its tag does not match;"
                " altered in transit, or that key's secret differs between the key files",
                sender=sender,
            )
        if sender == self._node:
            return Drop(DropReason.REFLECTED, "names this node as its sender", sender=sender)
        drop = self._check_fresh(sender, epoch, sequence)
        if drop is not None:
            return drop
        return Message(
            type=_message_type(type_),
            sender=sender,
            epoch=epoch,
            sequence=sequence,
            payload=bytes(data[header_length : header_length + payload_length]),
            key_id=key_id,
            version=(major, minor),
        )

    def _check_fresh(self, sender: str, epoch: int, sequence: int) -> Drop | None:
        """Refuse a stale or repeated message, or record it as seen."""
        peer = self._peers.get(sender)
        if peer is None or epoch > peer.epoch:
            self._peers[sender] = _Peer(epoch=epoch, highest=sequence, seen=1, floor=0)
            return None
        if epoch < peer.epoch:
            return Drop(
                DropReason.STALE_EPOCH,
                f"from {sender!r} epoch {epoch}, older than its epoch {peer.epoch} seen "
                "already; if that node lost its state directory, set its epoch above "
                f"{peer.epoch}",
                sender=sender,
            )
        if sequence <= peer.floor:
            return Drop(
                DropReason.REPLAYED,
                f"from {sender!r} sequence {sequence} of epoch {epoch}, at or below "
                f"{peer.floor} seen before this node restarted",
                sender=sender,
            )
        if sequence > peer.highest:
            shift = sequence - peer.highest
            mask = (1 << self._window) - 1
            peer.seen = ((peer.seen << shift) | 1) & mask if shift < self._window else 1
            peer.highest = sequence
            return None
        age = peer.highest - sequence
        if age >= self._window:
            return Drop(
                DropReason.REPLAYED,
                f"from {sender!r} sequence {sequence} of epoch {epoch}, {age} behind the "
                f"highest seen, beyond the {self._window}-message window",
                sender=sender,
            )
        if peer.seen >> age & 1:
            return Drop(
                DropReason.DUPLICATE,
                f"from {sender!r} sequence {sequence} of epoch {epoch}, accepted already",
                sender=sender,
            )
        peer.seen |= 1 << age
        return None

    def export_marks(self) -> dict[str, dict[str, int]]:
        """Per sender, the highest epoch and sequence accepted, as JSON-ready plain data.

        The daemon persists this (atomically) at shutdown, whenever a sender's epoch changes,
        and every few seconds; after a restart :meth:`import_marks` makes replays of what was
        seen before still refused. Messages accepted after the last save can be replayed once
        after a crash: the save interval bounds that exposure.
        """
        return {
            sender: {"epoch": peer.epoch, "sequence": max(peer.highest, peer.floor)}
            for sender, peer in self._peers.items()
        }

    def import_marks(self, marks: Mapping[str, Mapping[str, int]]) -> None:
        """Restore what :meth:`export_marks` gave, before the first :meth:`open`.

        Never lowers what this opener has seen already: a mark older than the current state is
        ignored. Validates the whole mapping before changing anything.

        :raises ConfigError: the data is not what :meth:`export_marks` makes (a corrupt file).
        """
        issues = []
        parsed: list[tuple[str, int, int]] = []
        for sender, mark in marks.items():
            epoch = sequence = None
            if isinstance(mark, Mapping):
                epoch = _u64(mark.get("epoch"), minimum=1)
                sequence = _u64(mark.get("sequence", 0), minimum=0)
            if not isinstance(sender, str) or epoch is None or sequence is None:
                issues.append(
                    ConfigIssue(
                        f"replay marks: sender {sender!r}",
                        "invalid mark",
                        value=mark,
                        expected='expected {"epoch": N >= 1, "sequence": N >= 0}; restore '
                        "the file from the node's state directory backup, or delete it "
                        "(replays of messages from before the restart are then accepted once)",
                    )
                )
                continue
            parsed.append((sender, epoch, sequence))
        if issues:
            raise ConfigError(issues)
        for sender, epoch, sequence in parsed:
            peer = self._peers.get(sender)
            if peer is None or epoch > peer.epoch:
                self._peers[sender] = _Peer(epoch=epoch, highest=sequence, seen=0, floor=sequence)
            elif epoch == peer.epoch and sequence > peer.floor:
                peer.floor = sequence

    def forget(self, sender: str) -> None:
        """Accept ``sender``'s next epoch whatever it is.

        For an operator whose peer lost its state directory and restarted its epochs at 1:
        until then every message from it is ``stale_epoch``.
        """
        self._peers.pop(sender, None)

    def known_senders(self) -> Iterable[str]:
        """The senders this opener holds replay state for."""
        return tuple(self._peers)


def _u64(value: object, *, minimum: int) -> int | None:
    """``value`` if it is an integer from ``minimum`` to 2**64 - 1, else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= _MAX_U64:
        return value
    return None


def _message_type(value: int) -> int:
    try:
        return MessageType(value)
    except ValueError:
        return value
