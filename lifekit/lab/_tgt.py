"""Command lines for tgtd (the lab's iSCSI target) and tgtadm, and a readiness poll.

This module builds argv lists and environments only; it starts nothing, so the caller decides
where a command runs (the lab runs tgtd inside its storage namespace, the tests in the root
namespace). Stdlib only.

Facts about tgt 1.0.85 (Debian 12) that shape these helpers:

- tgtd and tgtadm find their control socket through ``TGT_IPC_SOCKET``; tgtd appends the
  control port number, so ``TGT_IPC_SOCKET=/x/tgtd.sock`` means the socket
  ``/x/tgtd.sock.0`` (plus ``/x/tgtd.sock.0.lock``). Two tgtd on one socket collide: give
  each lab its own.
- ``tgtd -f`` stays in the foreground; it logs to stderr (``iser_ib_init Failed to
  initialize RDMA`` and ``can't adjust oom-killer's pardon`` are harmless).
- **tgtd ignores SIGTERM** (an empty handler in ``usr/tgtd.c``). Stopping it is SIGKILL of
  its PID (the lab kills its cgroup); :func:`teardown_argvs` first deletes the target and
  asks the daemon to exit, which works when tgtd is healthy.
- Persistent reservation state lives only in tgtd's memory: a killed tgtd forgets every
  registration and reservation.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "NBD_PLUGIN",
    "TGTD_STOP_SIGNAL",
    "fenced_path_argv",
    "loop_attach_argv",
    "setup_argvs",
    "show_argv",
    "teardown_argvs",
    "tgt_env",
    "tgtd_argv",
    "wait_ready",
]

TGTD_STOP_SIGNAL = signal.SIGKILL
"""The signal that stops tgtd: it ignores SIGTERM."""

NBD_PLUGIN = Path(__file__).resolve().with_name("_nbd_iscsi.py")
"""The nbdkit python plugin of the fenced path (a script: nbdkit runs it, lifekit does not)."""

_TGTADM = ("tgtadm", "--lld", "iscsi")


def tgtd_argv(portal: str) -> list[str]:
    """``tgtd`` in the foreground with one iSCSI portal.

    :param portal: ``addr:port`` to listen on, e.g. ``127.0.0.1:3260`` or ``[fd00::1]:3260``.
    """
    return ["tgtd", "-f", "--iscsi", f"portal={portal}"]


def tgt_env(ipc_socket: Path) -> dict[str, str]:
    """The environment entries that point tgtd and tgtadm at a private control socket.

    Merge them into the environment of both tgtd and every tgtadm call.

    :param ipc_socket: the socket path *without* tgt's ``.0`` suffix; its directory must exist.
    """
    return {"TGT_IPC_SOCKET": str(ipc_socket)}


def setup_argvs(
    *,
    tid: int,
    target_name: str,
    backing_store: Path,
    lun: int = 1,
    initiator_address: str = "ALL",
) -> list[list[str]]:
    """tgtadm commands that create a target with one file-backed LUN, open to initiators.

    Run them in order, after :func:`wait_ready`, each with :func:`tgt_env`.

    :param tid: target id (a positive integer, unique within this tgtd).
    :param target_name: the target IQN, e.g. ``iqn.2024-01.lab.lifekit:shared``.
    :param backing_store: the LUN image file (tgt's ``rdwr`` backing store: buffered I/O).
    :param lun: the LUN number; LUN 0 is tgt's controller LUN, so data LUNs start at 1.
    :param initiator_address: which initiator addresses may log in (``ALL`` or one address).
    """
    target = [*_TGTADM, "--mode", "target"]
    return [
        [*target, "--op", "new", "--tid", str(tid), "--targetname", target_name],
        [
            *_TGTADM,
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            str(tid),
            "--lun",
            str(lun),
            "--backing-store",
            str(backing_store),
        ],
        [*target, "--op", "bind", "--tid", str(tid), "--initiator-address", initiator_address],
    ]


def teardown_argvs(*, tid: int, stop_daemon: bool = True) -> list[list[str]]:
    """tgtadm commands that delete a target (closing its sessions) and then stop tgtd.

    Run them in order and ignore their failures (the daemon may already be gone); then
    SIGKILL tgtd's PID if it is still there, since it ignores SIGTERM.

    :param stop_daemon: also ask tgtd to exit (``--mode system --op delete``).
    """
    argvs = [[*_TGTADM, "--mode", "target", "--op", "delete", "--force", "--tid", str(tid)]]
    if stop_daemon:
        argvs.append(["tgtadm", "--mode", "system", "--op", "delete"])
    return argvs


def show_argv() -> list[str]:
    """``tgtadm`` listing every target, LUN, session and nexus (readable, for logs)."""
    return [*_TGTADM, "--mode", "target", "--op", "show"]


def wait_ready(
    run: Callable[[Sequence[str]], int],
    *,
    timeout: float = 5.0,
    interval: float = 0.005,
) -> float:
    """Poll tgtadm until tgtd answers on its control socket.

    tgtd serves its control socket from the same event loop as its portals, after they are
    listening, so an answer means logins will be accepted too.

    :param run: runs an argv (in the right namespace, with :func:`tgt_env` merged into its
        environment) and returns its exit status.
    :param timeout: seconds to keep trying.
    :param interval: seconds between attempts.
    :returns: seconds waited.
    :raises TimeoutError: tgtd did not answer in time; the message has the last exit status.
    """
    argv = show_argv()
    start = time.monotonic()
    while True:
        status = run(argv)
        waited = time.monotonic() - start
        if status == 0:
            return waited
        if waited >= timeout:
            raise TimeoutError(
                f"tgtd did not answer {' '.join(argv)} within {timeout} s (last exit status"
                f" {status}); check that tgtd is running with the same TGT_IPC_SOCKET and"
                " read its stderr"
            )
        time.sleep(interval)


def fenced_path_argv(
    *,
    fuse_file: Path,
    pidfile: Path,
    portal: str,
    target: str,
    initiator: str,
    key: int | None,
    lun: int = 1,
    block_size: int = 512,
    max_request: int = 262144,
    plugin_path: Path = NBD_PLUGIN,
) -> list[str]:
    """The ``nbdfuse`` command that exposes a LUN as a FUSE file through its own iSCSI session.

    Data path: ``fuse_file`` -> nbdfuse -> (socket activation) nbdkit ``--filter=blocksize``
    ``python`` *plugin_path* -> :class:`~lifekit.lab._iscsi.IscsiSession` -> tgtd. Put a loop
    device on ``fuse_file`` with :func:`loop_attach_argv` to get a block device.

    nbdfuse runs in the foreground until ``fusermount3 -u fuse_file.parent``; it writes
    *pidfile* once the FUSE file is ready. nbdkit gets ``--exit-with-parent`` and no ``-s``:
    with ``[ ... ]`` nbdfuse hands it a listening socket.

    :param fuse_file: where the LUN appears; its parent must be an empty directory, which
        nbdfuse mounts over.
    :param key: the node's reservation key; the plugin registers it (REGISTER AND IGNORE
        EXISTING KEY) on its first connection and reserves type 5 if the LUN is not reserved.
        ``None``: the session never registers, so it can write only while nobody reserves.
    :param block_size: the LUN's logical block size: the blocksize filter aligns requests
        to it.
    :param max_request: the largest request sent to the plugin, in bytes.
    :param plugin_path: the plugin script, :data:`NBD_PLUGIN` unless testing another.
    """
    nbdkit = [
        "nbdkit",
        "--exit-with-parent",
        "--filter=blocksize",
        "python",
        f"script={plugin_path}",
        f"minblock={block_size}",
        f"maxdata={max_request}",
        f"portal={portal}",
        f"target={target}",
        f"initiator={initiator}",
        f"lun={lun}",
    ]
    if key is not None:
        nbdkit.append(f"key={key:#x}")
    return ["nbdfuse", "-P", str(pidfile), str(fuse_file), "[", *nbdkit, "]"]


def loop_attach_argv(fuse_file: Path) -> list[str]:
    """``losetup`` that puts a loop device on a fenced path's FUSE file and prints its name.

    ``--direct-io=on`` matters: without it the loop driver reads through the FUSE file's page
    cache, so a node keeps seeing blocks it read before even after another node rewrote them
    at the target (measured: stale zeros after the other node's write). With it, every read
    goes to tgtd, as on a real shared LUN.
    """
    return ["losetup", "--direct-io=on", "-f", "--show", str(fuse_file)]
