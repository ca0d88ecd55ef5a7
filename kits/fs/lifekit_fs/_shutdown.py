"""Node side: shut a filesystem down at once, without flushing its log (a fenced node).

``python -m lifekit_fs._shutdown MOUNT_POINT --timeout T`` opens the mount's root directory
(a cached dentry: no I/O) and issues ``FS_IOC_SHUTDOWN`` (``0x8004587D``, shared by ext4's
``EXT4_IOC_SHUTDOWN`` and xfs's ``XFS_IOC_GOINGDOWN``) with flag 2, ``NOLOGFLUSH``: from then
on the filesystem refuses every write and writes back nothing. xfs does no I/O at all; ext4
still tries to record the abort in its journal superblock, which on dead storage blocks, after
the filesystem is already shut down. So the ioctl runs in a detached worker
(:mod:`lifekit_fs._detached`): the command prints ``done``, ``pending STEP`` (issued, still in
the kernel at the deadline) or ``failed REASON`` and exits 0, 3 or 1. Stdlib only.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Callable

from lifekit_fs._detached import start_worker, wait_workers

__all__ = ["FS_IOC_SHUTDOWN", "SHUTDOWN_NOLOGFLUSH", "main"]

FS_IOC_SHUTDOWN = 0x8004587D
SHUTDOWN_NOLOGFLUSH = 2


def main() -> None:
    """Shut down the filesystem mounted at the path given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mount_point")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()

    def job(step: Callable[[str], None]) -> dict[str, object]:
        step("open")
        fd = os.open(args.mount_point, os.O_RDONLY | os.O_DIRECTORY)
        try:
            step("ioctl")
            fcntl.ioctl(fd, FS_IOC_SHUTDOWN, SHUTDOWN_NOLOGFLUSH.to_bytes(4, "little"))
        finally:
            os.close(fd)
        return {"ok": True}

    worker = start_worker(job, args.timeout)
    wait_workers([worker])
    report = worker.report()
    if report.get("ok"):
        print("done")
    elif report.get("timeout"):
        print("pending", report.get("step"))
        sys.exit(3)
    else:
        print("failed", report.get("error"))
        sys.exit(1)


if __name__ == "__main__":
    main()
