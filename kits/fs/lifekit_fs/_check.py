"""Node side: one look at every fs resource of the node, in one process per check cycle.

Run as ``python -m lifekit_fs._check`` with a JSON request on stdin::

    {"resources": [{"tag": "data", "mount_point": "/srv/data", "device": "/dev/sdb1",
                    "fstype": "ext4", "depth": "mounted", "capacity": true,
                    "probe_timeout": 5.0, "stuck": null, "list_mount_point": false}]}

It reads the node's mountinfo once, stats each device node (``/dev`` is devtmpfs: no I/O to
the device itself), and runs the probes that do touch the filesystem (statfs for capacity, a
direct read of the device, a write and fsync of a small file) in detached workers
(:mod:`lifekit_fs._detached`) with each resource's ``probe_timeout``, so a hung filesystem
costs a check at most that long and never blocks it. It prints one JSON object mapping each
tag to what it found. Stdlib only.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

from lifekit_fs._detached import Worker, alive_since, start_worker, wait_workers
from lifekit_fs._mountinfo import parse_mountinfo

__all__ = ["PROBE_FILE", "main"]

#: The file the write probe rewrites and fsyncs at the root of the filesystem.
PROBE_FILE = ".lifekit-fs-probe"
#: Bytes the read probe reads from the start of the device, bypassing the page cache.
READ_BYTES = 65536


def _devno(path: str) -> tuple[str | None, str]:
    try:
        info = os.stat(path)
    except OSError as exc:
        return None, f"cannot stat device {path!r}: {exc.strerror}"
    if not stat.S_ISBLK(info.st_mode):
        return None, f"{path!r} is not a block device"
    return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}", ""


def _probe_job(request: dict[str, Any]) -> Callable[[Callable[[str], None]], dict[str, object]]:
    mount_point = request["mount_point"]
    depth = request["depth"]

    def job(step: Callable[[str], None]) -> dict[str, object]:
        result: dict[str, object] = {"ok": True}
        if request.get("capacity"):
            step("statfs")
            info = os.statvfs(mount_point)
            used = info.f_blocks - info.f_bfree
            total = used + info.f_bavail
            result["used_percent"] = 100.0 * used / total if total else 0.0
            result["free_bytes"] = info.f_bavail * info.f_frsize
        if depth in ("read", "write"):
            device = request.get("device_path")
            if device:
                step("read")
                buffer = mmap.mmap(-1, READ_BYTES)  # page aligned, as O_DIRECT wants
                fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
                try:
                    os.preadv(fd, [buffer], 0)
                finally:
                    os.close(fd)
            else:  # tmpfs: no device; reading the directory is the read
                step("read")
                os.listdir(mount_point)
        if depth == "write":
            step("write")
            path = os.path.join(mount_point, PROBE_FILE)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"lifekit fs probe {os.getpid()}\n".encode())
                step("fsync")
                os.fsync(fd)
            finally:
                os.close(fd)
        return result

    return job


def check(requests: list[dict[str, Any]], mountinfo: str) -> dict[str, dict[str, Any]]:
    """What :func:`main` prints, for the given requests and mountinfo text."""
    mounts = parse_mountinfo(mountinfo)
    found: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    for request in requests:
        tag, mount_point = request["tag"], request["mount_point"]
        entry: dict[str, Any] = {
            "mounts": [mount.to_json() for mount in mounts if mount.mount_point == mount_point]
        }
        device = request.get("device_path")
        if device:
            entry["devno"], entry["device_error"] = _devno(device)
            entry["device_mounted_at"] = sorted(
                {mount.mount_point for mount in mounts if mount.devno == entry["devno"]}
            )
        if request.get("list_mount_point") and not entry["mounts"]:
            try:
                entry["mount_point_entries"] = sorted(os.listdir(mount_point))[:5]
                entry["mount_point_exists"] = True
            except FileNotFoundError:
                entry["mount_point_exists"] = False
            except NotADirectoryError:
                entry["mount_point_exists"] = True
                entry["mount_point_entries"] = None
        stuck = request.get("stuck")
        if entry["mounts"] and (request.get("capacity") or request["depth"] != "mounted"):
            if stuck and alive_since(stuck[0], stuck[1]):
                # Never pile up workers on a hung filesystem: one stuck probe says it all.
                entry["probe"] = {"ok": False, "still_stuck": True, "stuck": stuck}
            else:
                workers[tag] = start_worker(_probe_job(request), request["probe_timeout"])
        found[tag] = entry
    wait_workers(list(workers.values()))
    for tag, worker in workers.items():
        found[tag]["probe"] = worker.report()
    return found


def main() -> None:
    """Read the request on stdin, print the findings on stdout."""
    request = json.loads(sys.stdin.read())
    with open("/proc/self/mountinfo") as file:
        mountinfo = file.read()
    print(json.dumps(check(request["resources"], mountinfo)))


if __name__ == "__main__":
    main()
