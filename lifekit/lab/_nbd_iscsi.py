"""nbdkit python plugin: an NBD export backed by one iSCSI session to a LUN (the fenced path).

nbdkit runs this file as a script (``nbdkit python script=.../_nbd_iscsi.py ...``, see
:func:`lifekit.lab._tgt.fenced_path_argv`) in its embedded interpreter, which is Debian's
libpython (``/usr/lib/python3.11``, not lifekit's venv): the script gets ``__file__`` and
``__name__ == "__main__"`` but its directory is not on ``sys.path``, so it loads
:mod:`lifekit.lab._iscsi` (stdlib only) by file path. Only the standard library is used.

Parameters (``key=value`` on the nbdkit command line): ``portal`` (``host:port``), ``target``
(IQN), ``initiator`` (this node's IQN), ``lun`` (default 1), ``key`` (hex reservation key,
optional).

Fencing contract, the same as fence_scsi's "on" (unfence) action at node join: with a
``key``, the first NBD connection registers it on this process's one iSCSI session (REGISTER
AND IGNORE EXISTING KEY) and, if the LUN is not reserved, reserves it with type 5 (WRITE
EXCLUSIVE, REGISTRANTS ONLY). The plugin never registers again, and never reconnects: once
another node preempts the key, every write of this node fails at tgtd with RESERVATION
CONFLICT, which the plugin returns to nbdkit as EIO (reads still work under type 5). To
rejoin, the node starts a new fenced path: that is the unfence.

Requests are serialized (a libiscsi context is single-threaded) and must be aligned to the
LUN's block size: run nbdkit with ``--filter=blocksize minblock=<block size>``.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

__all__ = ["API_VERSION", "PluginConfig"]

API_VERSION = 2
"""nbdkit python plugin API version: callbacks get ``flags``, ``pread`` fills a buffer."""


def _import_iscsi() -> Any:
    if __package__:  # imported as lifekit.lab._nbd_iscsi (tests, tooling)
        return importlib.import_module("._iscsi", __package__)
    # Run by nbdkit as a script: load the sibling file under a private name. It must be in
    # sys.modules before it runs, because dataclasses look their module up there.
    path = Path(__file__).resolve().with_name("_iscsi.py")
    spec = importlib.util.spec_from_file_location("lifekit_lab_iscsi", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}: keep _iscsi.py next to {Path(__file__).name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from . import _iscsi
else:
    _iscsi = _import_iscsi()


def _nbdkit() -> Any:
    # The `nbdkit` module exists only inside nbdkit's interpreter.
    return importlib.import_module("nbdkit")


@dataclass
class PluginConfig:
    """The plugin's parameters, filled by nbdkit's ``config`` callback."""

    portal: str = ""
    target: str = ""
    initiator: str = ""
    lun: int = 1
    key: int | None = None

    def set(self, name: str, value: str) -> None:
        """Apply one ``name=value`` parameter; raise ValueError naming a bad one."""
        if name in {"portal", "target", "initiator"}:
            setattr(self, name, value)
        elif name == "lun":
            self.lun = int(value)
        elif name == "key":
            key = int(value, 16)
            if not 0 < key < 1 << 64:
                raise ValueError(f"key={value}: a reservation key is 1 .. 2**64-1, in hex")
            self.key = key
        else:
            raise ValueError(
                f"unknown parameter {name}={value}; known: portal, target, initiator, lun, key"
            )

    def check(self) -> None:
        """Raise ValueError if a required parameter is missing."""
        missing = [name for name in ("portal", "target", "initiator") if not getattr(self, name)]
        if missing:
            raise ValueError(
                f"missing parameter(s) {', '.join(missing)}: give them as name=value after"
                " the script, e.g. portal=127.0.0.1:3260 target=iqn... initiator=iqn..."
            )


@dataclass
class _State:
    config: PluginConfig = field(default_factory=PluginConfig)
    session: _iscsi.IscsiSession | None = None
    # Set before the one join attempt, so a later connection can never re-register a key
    # that another node has since preempted.
    join_attempted: bool = False


_state = _State()


def _join(session: _iscsi.IscsiSession, key: int) -> None:
    """fence_scsi's unfence: register *key*, reserve type 5 if nobody holds the LUN."""
    kit = _nbdkit()
    session.register(key)
    if session.read_reservation().key is not None:
        kit.debug(f"nbd_iscsi: registered {key:#x}; the LUN is already reserved")
        return
    try:
        session.reserve(key, _iscsi.ReservationType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    except _iscsi.ScsiError as exc:
        # Another node reserved between our READ RESERVATION and RESERVE: it holds, we are
        # a registrant, which under type 5 is what matters.
        if not exc.is_reservation_conflict or session.read_reservation().key is None:
            raise
    kit.debug(f"nbd_iscsi: registered {key:#x} and reserved type 5")


def _session() -> _iscsi.IscsiSession:
    session = _state.session
    if session is None:
        raise RuntimeError("nbd_iscsi: no iSCSI session (open() did not run or failed)")
    return session


def _fail(exc: OSError) -> None:
    # nbdkit logs the exception itself; it only needs the errno the NBD client will see.
    _nbdkit().set_error(exc.errno or errno.EIO)


def _span(offset: int, length: int) -> tuple[int, int]:
    size = _session().block_size
    if offset % size or length % size:
        _nbdkit().set_error(errno.EINVAL)
        raise ValueError(
            f"request at offset {offset} length {length} is not aligned to the LUN's block"
            f" size {size}; run nbdkit with --filter=blocksize minblock={size}"
        )
    return offset // size, length // size


# --- nbdkit callbacks (module-level names are the plugin API) ---------------------------------


def config(key: str, value: str) -> None:
    """nbdkit callback: one ``key=value`` parameter."""
    _state.config.set(key, value)


def config_complete() -> None:
    """nbdkit callback: all parameters are in."""
    _state.config.check()


def thread_model() -> int:
    """nbdkit callback: one request at a time, as a libiscsi context requires."""
    return int(_nbdkit().THREAD_MODEL_SERIALIZE_ALL_REQUESTS)


def open(readonly: bool) -> int:
    """nbdkit callback: log in on the first connection and join (once) if a key was given."""
    if _state.session is None:
        conf = _state.config
        _state.session = _iscsi.IscsiSession(
            conf.portal, conf.target, initiator=conf.initiator, lun=conf.lun
        )
    if _state.config.key is not None and not _state.join_attempted:
        _state.join_attempted = True
        _join(_state.session, _state.config.key)
    return 1


def get_size(h: int) -> int:
    """nbdkit callback: the LUN's size in bytes."""
    session = _session()
    return session.blocks * session.block_size


def can_flush(h: int) -> bool:
    """nbdkit callback: flush is SYNCHRONIZE CACHE."""
    return True


def can_fua(h: int) -> int:
    """nbdkit callback: FUA maps to WRITE 16's FUA bit."""
    return int(_nbdkit().FUA_NATIVE)


def pread(h: int, buf: bytearray, offset: int, flags: int) -> None:
    """nbdkit callback: READ 16 into *buf*."""
    lba, count = _span(offset, len(buf))
    try:
        buf[:] = _session().read(lba, count)
    except OSError as exc:
        _fail(exc)
        raise


def pwrite(h: int, buf: bytes, offset: int, flags: int) -> None:
    """nbdkit callback: WRITE 16; RESERVATION CONFLICT (fenced) becomes EIO."""
    lba, _count = _span(offset, len(buf))
    fua = bool(flags & _nbdkit().FLAG_FUA)
    try:
        _session().write(lba, buf, fua=fua)
    except OSError as exc:
        _fail(exc)
        raise


def flush(h: int, flags: int) -> None:
    """nbdkit callback: SYNCHRONIZE CACHE 10."""
    try:
        _session().flush()
    except OSError as exc:
        _fail(exc)
        raise
