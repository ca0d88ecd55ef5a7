"""One iSCSI session to one LUN through libiscsi's sync API (``libiscsi.so.7``, via ctypes).

This module owns the lab's SCSI initiator: login, block I/O (READ/WRITE 16, SYNCHRONIZE
CACHE 10, TEST UNIT READY, READ CAPACITY 16) and SCSI-3 persistent reservations (PERSISTENT
RESERVE IN/OUT). The kernel here has no SCSI midlayer (no sd, sg or SG_IO), so a userspace
initiator is the only way to talk SCSI to the lab's tgtd.

It uses the standard library only, on purpose: the nbdkit plugin
(:mod:`lifekit.lab._nbd_iscsi`) loads this file by path under Debian's ``/usr/bin/python3``
(nbdkit embeds libpython), outside lifekit's virtual environment.

Facts a caller must know (see ``shared/field-notes/scsi-persistent-reservations.md``):

- **One** :class:`IscsiSession` **is one I_T nexus.** tgt binds a registration to the iSCSI
  session (its TSIH), not to the initiator name: a second login with the same IQN is a new,
  unregistered nexus, and a registration whose session logged out stays behind as an orphan.
  Keep one long-lived session per simulated node and path. For the same reason the session
  never reconnects by itself (libiscsi's auto-reconnect is turned off): a silent re-login
  would swap the registered nexus for an unregistered one.
- UNIT ATTENTION is normal traffic (tgt queues 2A/03 RESERVATIONS PREEMPTED for a preempted
  nexus, 2A/04 RESERVATIONS RELEASED even to the nexus that released, 29/xx after login): each
  command is retried up to :data:`UA_RETRIES` times and the absorbed (asc, ascq) pairs are
  appended to :attr:`IscsiSession.unit_attentions`.
- tgt does not implement PREEMPT AND ABORT (it answers ILLEGAL REQUEST); :meth:`preempt` falls
  back to plain PREEMPT and records it. tgt rejects APTPL and keeps PR state in memory only.
- A session is not thread-safe in libiscsi; calls are serialized with a lock.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import math
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "LIBISCSI_SONAME",
    "UA_RETRIES",
    "IscsiConnectionError",
    "IscsiSession",
    "IscsiTimeout",
    "LibiscsiMissing",
    "PrOutAction",
    "Reservation",
    "ReservationType",
    "ScsiError",
    "ScsiStatus",
    "ScsiTask",
    "SenseKey",
    "load_libiscsi",
]

LIBISCSI_SONAME = "libiscsi.so.7"
"""The shared library this module binds to (Debian package ``libiscsi7``)."""

UA_RETRIES = 5
"""How many times one command is re-sent after a UNIT ATTENTION before it is an error."""


class ScsiStatus(enum.IntEnum):
    """SCSI status of a completed command, plus libiscsi's transport pseudo-statuses."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40
    # libiscsi's own values (iscsi.h): the command never completed on the target.
    REDIRECT = 0x101
    CANCELLED = 0x0F000000
    ERROR = 0x0F000001
    TIMEOUT = 0x0F000002


class SenseKey(enum.IntEnum):
    """Sense key of a CHECK CONDITION (SPC-4 table 48)."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE


class ReservationType(enum.IntEnum):
    """Persistent reservation type (the TYPE field of PERSISTENT RESERVE OUT)."""

    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8


class PrOutAction(enum.IntEnum):
    """Service action of PERSISTENT RESERVE OUT."""

    REGISTER = 0
    RESERVE = 1
    RELEASE = 2
    CLEAR = 3
    PREEMPT = 4
    PREEMPT_AND_ABORT = 5
    REGISTER_AND_IGNORE_EXISTING_KEY = 6


class _PrInAction(enum.IntEnum):
    READ_KEYS = 0
    READ_RESERVATION = 1


@dataclass(frozen=True)
class Reservation:
    """The answer to READ RESERVATION.

    :ivar generation: the PR generation counter (bumped by every PR OUT that changes state).
    :ivar key: the holder's reservation key, or ``None`` when the LUN is not reserved (for the
        all-registrants types 7 and 8 SPC reports key 0: every registrant holds it).
    :ivar type: the reservation type, or ``None`` when the LUN is not reserved.
    """

    generation: int
    key: int | None
    type: ReservationType | None


class LibiscsiMissing(ImportError):
    """``libiscsi.so.7`` cannot be loaded."""


class ScsiError(OSError):
    """A SCSI command completed with a status other than GOOD.

    ``errno`` is ``EIO``; the message names the command, the status and the sense data, e.g.
    ``WRITE16 lba 0: RESERVATION CONFLICT``.

    :ivar op: the command, with its main operands (``"WRITE16 lba 0"``).
    :ivar status: the SCSI status.
    :ivar sense_key: for CHECK CONDITION, the sense key; otherwise ``None``.
    :ivar asc: additional sense code, or ``None``.
    :ivar ascq: additional sense code qualifier, or ``None``.
    """

    def __init__(
        self,
        op: str,
        status: ScsiStatus,
        *,
        sense_key: int | None = None,
        asc: int | None = None,
        ascq: int | None = None,
        description: str = "",
    ) -> None:
        self.op = op
        self.status = status
        self.sense_key = sense_key
        self.asc = asc
        self.ascq = ascq
        message = f"{op}: {status.name.replace('_', ' ')}"
        if sense_key is not None:
            try:
                key_name = SenseKey(sense_key).name.replace("_", " ")
            except ValueError:
                key_name = f"0x{sense_key:x}"
            message += f", sense key {key_name}"
            if asc is not None and ascq is not None:
                message += f", asc/ascq 0x{asc:02x}/0x{ascq:02x}"
                if description:
                    message += f" ({description})"
        if status is ScsiStatus.RESERVATION_CONFLICT:
            message += (
                " (this I_T nexus may not do that under the LUN's current persistent"
                " reservation: it is not registered, or not the holder)"
            )
        super().__init__(errno.EIO, message)

    def __str__(self) -> str:
        return str(self.strerror)

    @property
    def is_reservation_conflict(self) -> bool:
        """Whether the target refused the command because of a persistent reservation."""
        return self.status is ScsiStatus.RESERVATION_CONFLICT

    @property
    def is_illegal_request(self) -> bool:
        """Whether the target does not support the command or a field of it."""
        return (
            self.status is ScsiStatus.CHECK_CONDITION and self.sense_key == SenseKey.ILLEGAL_REQUEST
        )


class IscsiConnectionError(ConnectionError):
    """Login failed, or the session's transport broke (connection lost, command timed out).

    :ivar portal: ``host:port`` of the target portal.
    :ivar target: the target's IQN.
    :ivar detail: libiscsi's error string.
    """

    def __init__(self, message: str, *, portal: str, target: str, detail: str) -> None:
        super().__init__(message)
        self.portal = portal
        self.target = target
        self.detail = detail


class IscsiTimeout(IscsiConnectionError, TimeoutError):
    """The login or a command got no answer within the session's timeout."""


# --- ctypes mirror of /usr/include/iscsi/scsi-lowlevel.h (libiscsi-dev 1.19.0) ---------------
# Offsets checked with offsetof() against that header on Debian 12: status@0, sense.key@52,
# sense.ascq@56 (asc << 8 | ascq), datain.size@64, datain.data@72, sizeof(struct scsi_task) 176.


class _ScsiSense(ctypes.Structure):
    # The three 1-bit fields share one `unsigned` with bit_pointer and field_pointer after
    # them (GCC packs them into the same 4 bytes); ctypes would not place them the same way,
    # so they are one opaque byte here: nothing below reads them.
    _fields_ = (
        ("error_type", ctypes.c_ubyte),
        ("key", ctypes.c_int),
        ("ascq", ctypes.c_int),
        ("_bitfields", ctypes.c_ubyte),
        ("bit_pointer", ctypes.c_ubyte),
        ("field_pointer", ctypes.c_uint16),
    )


class _ScsiData(ctypes.Structure):
    _fields_ = (("size", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte)))


class _ScsiIovector(ctypes.Structure):
    _fields_ = (
        ("iov", ctypes.c_void_p),
        ("niov", ctypes.c_int),
        ("nalloc", ctypes.c_int),
        ("offset", ctypes.c_size_t),
        ("consumed", ctypes.c_int),
    )


class ScsiTask(ctypes.Structure):
    """``struct scsi_task`` from ``/usr/include/iscsi/scsi-lowlevel.h`` (read-only here)."""

    _fields_ = (
        ("status", ctypes.c_int),
        ("cdb_size", ctypes.c_int),
        ("xfer_dir", ctypes.c_int),
        ("expxferlen", ctypes.c_int),
        ("cdb", ctypes.c_ubyte * 16),
        ("residual_status", ctypes.c_int),
        ("residual", ctypes.c_size_t),
        ("sense", _ScsiSense),
        ("datain", _ScsiData),
        ("mem", ctypes.c_void_p),
        ("ptr", ctypes.c_void_p),
        ("itt", ctypes.c_uint32),
        ("cmdsn", ctypes.c_uint32),
        ("lun", ctypes.c_uint32),
        ("iovector_in", _ScsiIovector),
        ("iovector_out", _ScsiIovector),
    )


class _ProutBasic(ctypes.Structure):
    # struct scsi_persistent_reserve_out_basic (scsi-lowlevel.h)
    _fields_ = (
        ("reservation_key", ctypes.c_uint64),
        ("service_action_reservation_key", ctypes.c_uint64),
        ("spec_i_pt", ctypes.c_uint8),
        ("all_tg_pt", ctypes.c_uint8),
        ("aptpl", ctypes.c_uint8),
    )


_TaskP = ctypes.POINTER(ScsiTask)
_ctx = ctypes.c_void_p  # struct iscsi_context *, opaque
_int = ctypes.c_int

# name -> (restype, argtypes), from /usr/include/iscsi/iscsi.h and scsi-lowlevel.h
_SIGNATURES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "iscsi_create_context": (_ctx, (ctypes.c_char_p,)),
    "iscsi_destroy_context": (_int, (_ctx,)),
    "iscsi_get_error": (ctypes.c_char_p, (_ctx,)),
    "iscsi_set_targetname": (_int, (_ctx, ctypes.c_char_p)),
    "iscsi_set_session_type": (_int, (_ctx, _int)),
    "iscsi_set_header_digest": (_int, (_ctx, _int)),
    "iscsi_set_timeout": (_int, (_ctx, _int)),
    "iscsi_set_noautoreconnect": (None, (_ctx, _int)),
    "iscsi_full_connect_sync": (_int, (_ctx, ctypes.c_char_p, _int)),
    "iscsi_logout_sync": (_int, (_ctx,)),
    "iscsi_testunitready_sync": (_TaskP, (_ctx, _int)),
    "iscsi_readcapacity16_sync": (_TaskP, (_ctx, _int)),
    "iscsi_read16_sync": (
        _TaskP,
        (_ctx, _int, ctypes.c_uint64, ctypes.c_uint32, _int, _int, _int, _int, _int, _int),
    ),
    "iscsi_write16_sync": (
        _TaskP,
        (
            _ctx,
            _int,
            ctypes.c_uint64,
            ctypes.c_char_p,  # unsigned char *data, only read by libiscsi
            ctypes.c_uint32,
            _int,
            _int,
            _int,
            _int,
            _int,
            _int,
        ),
    ),
    "iscsi_synchronizecache10_sync": (_TaskP, (_ctx, _int, _int, _int, _int, _int)),
    "iscsi_persistent_reserve_in_sync": (_TaskP, (_ctx, _int, _int, ctypes.c_uint16)),
    "iscsi_persistent_reserve_out_sync": (
        _TaskP,
        (_ctx, _int, _int, _int, _int, ctypes.POINTER(_ProutBasic)),
    ),
    "scsi_free_scsi_task": (None, (_TaskP,)),
    "scsi_sense_ascq_str": (ctypes.c_char_p, (_int,)),
}

_ISCSI_SESSION_NORMAL = 2
_ISCSI_HEADER_DIGEST_NONE_CRC32C = 1  # offer None, accept CRC32C: tgt picks None
_PR_SCOPE_LU = 0
_READ_KEYS_ALLOCATION = 8 + 8 * 64  # 64 registrations; re-asked with the exact size if more
_MAX_ALLOCATION = 0xFFFF  # the CDB's ALLOCATION LENGTH is 16 bits

_lib_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def load_libiscsi() -> ctypes.CDLL:
    """Load ``libiscsi.so.7`` once and declare the prototypes this module calls.

    :raises LibiscsiMissing: the library is not installed (Debian package ``libiscsi7``).
    """
    global _lib  # noqa: PLW0603 - one process-wide handle, loaded on first use
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(LIBISCSI_SONAME)
            except OSError as exc:
                raise LibiscsiMissing(
                    f"cannot load {LIBISCSI_SONAME} ({exc}); install the Debian package"
                    " libiscsi7: apt-get install -y --no-install-recommends libiscsi7"
                ) from exc
            for name, (restype, argtypes) in _SIGNATURES.items():
                function = getattr(lib, name)
                function.restype = restype
                function.argtypes = argtypes
            _lib = lib
        return _lib


def _ascq_text(lib: ctypes.CDLL, asc_ascq: int) -> str:
    text: bytes | None = lib.scsi_sense_ascq_str(asc_ascq)
    return text.decode("ascii", "replace") if text else ""


class IscsiSession:
    """A logged-in iSCSI session to one LUN: one I_T nexus, kept until :meth:`close`.

    Use it as a context manager. Every method sends one SCSI command (two for
    :meth:`preempt` on a target without PREEMPT AND ABORT) and raises :class:`ScsiError` on a
    status other than GOOD, after absorbing up to :data:`UA_RETRIES` UNIT ATTENTIONs.

    :param portal: ``host:port`` of the target portal (``[addr]:port`` for IPv6).
    :param target: the target's IQN.
    :param initiator: this initiator's IQN; tgt reports it per session.
    :param lun: the logical unit number.
    :param timeout: seconds each command (and the logout) may take; libiscsi counts whole
        seconds, so it is rounded up. ``0`` disables the timeout.
    :raises IscsiConnectionError: the login failed; the message names portal, target and
        libiscsi's reason.
    :raises LibiscsiMissing: ``libiscsi.so.7`` is not installed.

    :ivar unit_attentions: the (asc, ascq) of every UNIT ATTENTION absorbed by a retry, in
        order; the caller may clear it.
    :ivar preempt_and_abort_unsupported: set once the target answered PREEMPT AND ABORT with
        ILLEGAL REQUEST; later :meth:`preempt` calls go straight to PREEMPT.
    """

    def __init__(
        self,
        portal: str,
        target: str,
        *,
        initiator: str,
        lun: int = 1,
        timeout: float = 5.0,
    ) -> None:
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
        self.portal = portal
        self.target = target
        self.initiator = initiator
        self.lun = lun
        self.unit_attentions: list[tuple[int, int]] = []
        self.preempt_and_abort_unsupported = False
        self._lock = threading.Lock()
        self._libiscsi = load_libiscsi()
        context = self._libiscsi.iscsi_create_context(initiator.encode())
        if not context:
            raise IscsiConnectionError(
                f"libiscsi could not create a context for initiator {initiator!r}"
                " (an initiator name must be a non-empty IQN)",
                portal=portal,
                target=target,
                detail="iscsi_create_context returned NULL",
            )
        self._context: int | None = context
        try:
            self._login(math.ceil(timeout))
            self._block_size, self._blocks = self._read_capacity()
        except BaseException:
            self._libiscsi.iscsi_destroy_context(context)
            self._context = None
            raise

    def _login(self, timeout: int) -> None:
        lib, context = self._libiscsi, self._context
        lib.iscsi_set_targetname(context, self.target.encode())
        lib.iscsi_set_session_type(context, _ISCSI_SESSION_NORMAL)
        lib.iscsi_set_header_digest(context, _ISCSI_HEADER_DIGEST_NONE_CRC32C)
        lib.iscsi_set_timeout(context, timeout)
        # A reconnect would be a new, unregistered I_T nexus on tgt: fail loudly instead.
        lib.iscsi_set_noautoreconnect(context, 1)
        if lib.iscsi_full_connect_sync(context, self.portal.encode(), self.lun) != 0:
            detail = self._error_text()
            if "reconnect" in detail:
                # libiscsi reports a refused TCP connection as a failed reconnect; say what
                # really happened.
                detail = f"TCP connect: {_probe_portal(self.portal)} ({detail})"
            cls = IscsiTimeout if "timed out" in detail else IscsiConnectionError
            raise cls(
                f"iSCSI login to target {self.target} LUN {self.lun} at portal {self.portal}"
                f" as {self.initiator} failed: {detail}; check that tgtd listens on that"
                " portal, that the target exists and that it is bound to this initiator"
                " (tgtadm --op bind)",
                portal=self.portal,
                target=self.target,
                detail=detail,
            )

    def _error_text(self) -> str:
        if self._context is None:
            return "session closed"
        text: bytes | None = self._libiscsi.iscsi_get_error(self._context)
        return text.decode("utf-8", "replace").strip() if text else "unknown libiscsi error"

    def __repr__(self) -> str:
        state = "closed" if self._context is None else "open"
        return (
            f"<IscsiSession {self.initiator} -> {self.target} LUN {self.lun}"
            f" at {self.portal} ({state})>"
        )

    def __enter__(self) -> IscsiSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Log out and free the session; calling it again does nothing.

        On tgt the session's registrations stay behind after logout (orphans): unregister
        first if the key should go.
        """
        with self._lock:
            context, self._context = self._context, None
            if context is None:
                return
            try:
                self._libiscsi.iscsi_logout_sync(context)  # fails harmlessly on a dead link
            finally:
                self._libiscsi.iscsi_destroy_context(context)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._context is None

    @property
    def block_size(self) -> int:
        """Logical block size in bytes (READ CAPACITY 16 at login)."""
        return self._block_size

    @property
    def blocks(self) -> int:
        """Number of logical blocks (READ CAPACITY 16 at login)."""
        return self._blocks

    # --- command plumbing ---------------------------------------------------------------

    def _command(self, op: str, send: Any) -> bytes:
        """Send a command via ``send(lib, context)``; return its data-in bytes.

        Retries UNIT ATTENTION, frees every task, raises on anything but GOOD.
        """
        lib = self._libiscsi
        with self._lock:
            for _attempt in range(UA_RETRIES + 1):
                context = self._context
                if context is None:
                    raise ValueError(f"{op}: the session was closed; open a new IscsiSession")
                task = send(lib, context)
                if not task:
                    raise self._transport_error(op, ScsiStatus.ERROR)
                try:
                    record = task.contents
                    status = record.status
                    if status == ScsiStatus.GOOD:
                        size = record.datain.size
                        if size <= 0 or not record.datain.data:
                            return b""
                        return ctypes.string_at(record.datain.data, size)
                    sense_key, asc_ascq = record.sense.key, record.sense.ascq
                finally:
                    lib.scsi_free_scsi_task(task)
                asc, ascq = asc_ascq >> 8 & 0xFF, asc_ascq & 0xFF
                if status == ScsiStatus.CHECK_CONDITION and sense_key == SenseKey.UNIT_ATTENTION:
                    self.unit_attentions.append((asc, ascq))
                    continue
                try:
                    known = ScsiStatus(status)
                except ValueError:
                    raise self._transport_error(op, ScsiStatus.ERROR) from None
                if known in (ScsiStatus.ERROR, ScsiStatus.CANCELLED, ScsiStatus.TIMEOUT):
                    raise self._transport_error(op, known)
                if known is ScsiStatus.CHECK_CONDITION:
                    raise ScsiError(
                        op,
                        known,
                        sense_key=sense_key,
                        asc=asc,
                        ascq=ascq,
                        description=_ascq_text(lib, asc_ascq),
                    )
                raise ScsiError(op, known)
            asc, ascq = self.unit_attentions[-1]
            raise ScsiError(
                f"{op} (after {UA_RETRIES} retries)",
                ScsiStatus.CHECK_CONDITION,
                sense_key=SenseKey.UNIT_ATTENTION,
                asc=asc,
                ascq=ascq,
                description=_ascq_text(lib, asc << 8 | ascq),
            )

    def _transport_error(self, op: str, status: ScsiStatus) -> IscsiConnectionError:
        detail = self._error_text()
        cls = IscsiTimeout if status is ScsiStatus.TIMEOUT else IscsiConnectionError
        return cls(
            f"{op}: no SCSI status from target {self.target} at portal {self.portal}"
            f" ({status.name}: {detail}); the session is unusable, open a new one",
            portal=self.portal,
            target=self.target,
            detail=detail,
        )

    def _read_capacity(self) -> tuple[int, int]:
        data = self._command(
            "READ CAPACITY16", lambda lib, ctx: lib.iscsi_readcapacity16_sync(ctx, self.lun)
        )
        last_lba, block_size = struct.unpack_from(">QI", data)
        return block_size, last_lba + 1

    # --- block I/O ----------------------------------------------------------------------

    def test_unit_ready(self) -> None:
        """Send TEST UNIT READY (also consumes pending UNIT ATTENTIONs)."""
        self._command(
            "TEST UNIT READY", lambda lib, ctx: lib.iscsi_testunitready_sync(ctx, self.lun)
        )

    def read(self, lba: int, count: int) -> bytes:
        """READ 16 of *count* blocks from *lba*; returns ``count * block_size`` bytes."""
        length = count * self._block_size
        data = self._command(
            f"READ16 lba {lba} blocks {count}",
            lambda lib, ctx: lib.iscsi_read16_sync(
                ctx, self.lun, lba, length, self._block_size, 0, 0, 0, 0, 0
            ),
        )
        if len(data) != length:
            raise ScsiError(f"READ16 lba {lba}: {len(data)} of {length} bytes", ScsiStatus.GOOD)
        return data

    def write(self, lba: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        """WRITE 16 *data* at *lba*; its length must be a multiple of :attr:`block_size`.

        :param fua: Force Unit Access: the target writes through its cache.
        """
        payload = bytes(data)
        if not payload or len(payload) % self._block_size:
            raise ValueError(
                f"write of {len(payload)} bytes at lba {lba}: the length must be a non-zero"
                f" multiple of the block size {self._block_size}; pad the data"
            )
        self._command(
            f"WRITE16 lba {lba}",
            lambda lib, ctx: lib.iscsi_write16_sync(
                ctx, self.lun, lba, payload, len(payload), self._block_size, 0, 0, int(fua), 0, 0
            ),
        )

    def flush(self) -> None:
        """SYNCHRONIZE CACHE 10 over the whole LUN (tgt fsyncs its backing file)."""
        self._command(
            "SYNCHRONIZE CACHE10",
            lambda lib, ctx: lib.iscsi_synchronizecache10_sync(ctx, self.lun, 0, 0, 0, 0),
        )

    # --- persistent reservations --------------------------------------------------------

    def _pr_out(
        self,
        op: str,
        action: PrOutAction,
        *,
        key: int = 0,
        sa_key: int = 0,
        type: ReservationType | int = 0,
    ) -> None:
        params = _ProutBasic(key, sa_key, 0, 0, 0)
        self._command(
            op,
            lambda lib, ctx: lib.iscsi_persistent_reserve_out_sync(
                ctx, self.lun, int(action), _PR_SCOPE_LU, int(type), ctypes.byref(params)
            ),
        )

    def _pr_in(self, op: str, action: _PrInAction, length: int) -> bytes:
        return self._command(
            op,
            lambda lib, ctx: lib.iscsi_persistent_reserve_in_sync(
                ctx, self.lun, int(action), length
            ),
        )

    def register(self, key: int, *, ignore_existing: bool = True) -> None:
        """Register *key* for this I_T nexus.

        :param ignore_existing: send REGISTER AND IGNORE EXISTING KEY (works whether or not
            the nexus is registered, as fence_scsi does); ``False`` sends plain REGISTER,
            which only succeeds on a nexus that is not registered yet.
        """
        _check_key(key, "register")
        if ignore_existing:
            action, name = PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, "REGISTER AND IGNORE"
        else:
            action, name = PrOutAction.REGISTER, "REGISTER"
        self._pr_out(f"PR OUT {name} key {key:#x}", action, sa_key=key)

    def unregister(self, key: int) -> None:
        """Remove this nexus's registration *key* (REGISTER with service action key 0).

        Unregistering the holder of a reservation of type 1, 3, 5 or 6 also releases it.
        """
        _check_key(key, "unregister")
        self._pr_out(f"PR OUT UNREGISTER key {key:#x}", PrOutAction.REGISTER, key=key)

    def reserve(self, key: int, type: ReservationType) -> None:
        """RESERVE with this nexus's registered *key*; conflicts if another holds the LUN."""
        self._pr_out(
            f"PR OUT RESERVE key {key:#x} type {ReservationType(type).name}",
            PrOutAction.RESERVE,
            key=key,
            type=type,
        )

    def release(self, key: int, type: ReservationType) -> None:
        """RELEASE the reservation this nexus holds (registrations stay)."""
        self._pr_out(
            f"PR OUT RELEASE key {key:#x} type {ReservationType(type).name}",
            PrOutAction.RELEASE,
            key=key,
            type=type,
        )

    def clear(self, key: int) -> None:
        """CLEAR: drop the reservation and every registration (needs a registered *key*)."""
        self._pr_out(f"PR OUT CLEAR key {key:#x}", PrOutAction.CLEAR, key=key)

    def preempt(
        self,
        key: int,
        victim: int,
        type: ReservationType,
        *,
        abort: bool = True,
    ) -> PrOutAction:
        """Remove *victim*'s registrations (and take its reservation if it held one).

        With *abort*, PREEMPT AND ABORT is sent first; if the target answers ILLEGAL REQUEST
        (tgt does not implement it), plain PREEMPT is sent, and
        :attr:`preempt_and_abort_unsupported` is set so later calls skip the first try.

        :returns: the service action that succeeded.
        """
        _check_key(victim, "preempt")
        name = ReservationType(type).name
        if abort and not self.preempt_and_abort_unsupported:
            try:
                self._pr_out(
                    f"PR OUT PREEMPT AND ABORT key {key:#x} victim {victim:#x} type {name}",
                    PrOutAction.PREEMPT_AND_ABORT,
                    key=key,
                    sa_key=victim,
                    type=type,
                )
            except ScsiError as exc:
                if not exc.is_illegal_request:
                    raise
                self.preempt_and_abort_unsupported = True
            else:
                return PrOutAction.PREEMPT_AND_ABORT
        self._pr_out(
            f"PR OUT PREEMPT key {key:#x} victim {victim:#x} type {name}",
            PrOutAction.PREEMPT,
            key=key,
            sa_key=victim,
            type=type,
        )
        return PrOutAction.PREEMPT

    def read_keys(self) -> tuple[int, list[int]]:
        """READ KEYS: the PR generation and every registered key, one per registered nexus.

        A key registered through two sessions (a node's control and data sessions) appears
        twice.
        """
        length = _READ_KEYS_ALLOCATION
        while True:
            data = self._pr_in("PR IN READ KEYS", _PrInAction.READ_KEYS, length)
            generation, additional = struct.unpack_from(">II", data)
            needed = 8 + additional
            if needed <= len(data) or length >= _MAX_ALLOCATION:
                break
            length = min(needed, _MAX_ALLOCATION)
        count = min(additional, len(data) - 8) // 8
        keys = list(struct.unpack_from(f">{count}Q", data, 8))
        return generation, keys

    def read_reservation(self) -> Reservation:
        """READ RESERVATION: the holder's key and the type, if the LUN is reserved."""
        data = self._pr_in("PR IN READ RESERVATION", _PrInAction.READ_RESERVATION, 24)
        generation, additional = struct.unpack_from(">II", data)
        if additional < 16 or len(data) < 24:
            return Reservation(generation=generation, key=None, type=None)
        (key,) = struct.unpack_from(">Q", data, 8)
        return Reservation(generation=generation, key=key, type=ReservationType(data[21] & 0x0F))


def _probe_portal(portal: str) -> str:
    host, _, port = portal.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return "connects"
    except (OSError, ValueError) as exc:
        return str(exc)


def _check_key(key: int, what: str) -> None:
    if not 0 < key < 1 << 64:
        raise ValueError(
            f"{what}: reservation key {key!r} is out of range; use 1 .. 2**64-1"
            " (0 means 'no key' in SPC)"
        )
