"""PID 1 of a lab node: set up the node's private mounts, then reap orphans until killed.

Run as ``python -I -S _init.py SETUP_JSON`` by ``unshare --mount --uts --pid --fork
--mount-proc`` inside the node's network namespace, so it starts in a fresh private mount
namespace, UTS namespace and PID namespace. It imports only the standard library (``-S``: no
site, for a fast start). SETUP_JSON holds ``hostname`` and ``mounts``: a list of operations
``["umount", path]``, ``["tmpfs", path, options]``, ``["sysfs", path]``, ``["bind", source,
target]``, ``["mkdir", path]`` and ``["symlink", target, path]``, applied in order.

When it is ready it writes ``ready`` and a newline to standard output and closes it. As PID 1
of its namespace it inherits every orphan of the node (a double-forked daemon's parent
exits); it reaps them so that none stays a zombie. Signals from inside the node cannot kill it
(PID 1 ignores signals it has no handler for); the lab kills it, with the whole node, through
the node's cgroup.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys

MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2


def _libc_call(name: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    result = getattr(libc, name)(*args)
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}{args!r}: {os.strerror(error)}")


def _apply(operation: list[str]) -> None:
    kind, *args = operation
    if kind == "umount":
        with contextlib.suppress(OSError):  # not mounted here: nothing to hide
            _libc_call("umount2", args[0].encode(), MNT_DETACH)
    elif kind == "tmpfs":
        path, options = args
        _libc_call("mount", b"lklab", path.encode(), b"tmpfs", 0, options.encode())
    elif kind == "sysfs":
        # A fresh sysfs shows this network namespace's interfaces under /sys/class/net.
        _libc_call("umount2", args[0].encode(), MNT_DETACH)
        _libc_call("mount", b"lklab", args[0].encode(), b"sysfs", 0, None)
    elif kind == "bind":
        source, target = args
        _libc_call("mount", source.encode(), target.encode(), None, MS_BIND | MS_REC, None)
    elif kind == "mkdir":
        os.makedirs(args[0], exist_ok=True)
    elif kind == "symlink":
        os.symlink(args[0], args[1])
    else:
        raise ValueError(f"unknown setup operation {operation!r}")


def main() -> None:
    """Set the node up, report ready, reap children forever."""
    setup = json.loads(sys.argv[1])
    socket.sethostname(setup["hostname"])
    for operation in setup["mounts"]:
        _apply(operation)
    # Block SIGCHLD and wait for it synchronously: no reaping race, no handler needed.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while True:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        signal.sigwait({signal.SIGCHLD})


if __name__ == "__main__":
    main()
