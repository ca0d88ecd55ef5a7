"""Node side: the processes holding a mount, found without ever touching its filesystem.

``python -m lifekit_fs._holders MOUNT_POINT --timeout T`` prints one line per holder::

    1234 cwd /srv/data/work
    1240 fd /srv/data/db.log

Unlike ``fuser``/``lsof``, which ``stat`` every file and hang on a dead mount, it only reads
``/proc``: the ``readlink`` of ``cwd``, ``root``, ``exe`` and ``fd/*`` (the kernel prints the
path from its dentry cache, with no I/O to the filesystem), the mount id in ``fdinfo``, and
the paths in ``maps`` (memory-mapped files, a qemu's disk image). It walks under an overall
deadline, in a detached worker (:mod:`lifekit_fs._detached`), and reports what it found in
time with a ``partial`` line if the deadline cut it short. It never lists itself, its worker,
or PID 1. Stdlib only.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from lifekit_fs._detached import start_worker, wait_workers
from lifekit_fs._mountinfo import parse_mountinfo

__all__ = ["find_holders", "main"]


def _under(path: str, mount_point: str) -> bool:
    path = path.removesuffix(" (deleted)")
    return path == mount_point or path.startswith(mount_point + "/")


def _mount_ids(mount_point: str) -> set[str]:
    with open("/proc/self/mountinfo") as file:
        mounts = parse_mountinfo(file.read())
    return {str(mount.mount_id) for mount in mounts if mount.mount_point == mount_point}


def _holds(pid: str, mount_point: str, mount_ids: set[str]) -> str | None:
    """How process ``pid`` holds the mount (``cwd``, ``fd`` ...), or ``None``."""
    base = f"/proc/{pid}"
    for link in ("cwd", "root", "exe"):
        try:
            if _under(os.readlink(f"{base}/{link}"), mount_point):
                return link
        except OSError:
            pass
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        fds = []
    for fd in fds:
        try:
            with open(f"{base}/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("mnt_id:"):
                        if line.split()[1] in mount_ids:
                            return "fd"
                        break
        except OSError:
            pass
        try:
            if _under(os.readlink(f"{base}/fd/{fd}"), mount_point):
                return "fd"
        except OSError:
            pass
    try:
        with open(f"{base}/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6 and _under(parts[5].strip(), mount_point):
                    return "maps"
    except OSError:
        pass
    return None


def find_holders(
    mount_point: str, *, deadline: float, exclude: set[int]
) -> tuple[list[tuple[int, str]], bool]:
    """Holders of ``mount_point`` found before ``deadline``; and whether the walk finished."""
    mount_ids = _mount_ids(mount_point)
    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if time.monotonic() > deadline:
            return found, False
        if not entry.isdigit() or int(entry) in exclude:
            continue
        how = _holds(entry, mount_point, mount_ids)
        if how is not None:
            found.append((int(entry), how))
    return found, True


def main() -> None:
    """Print the holders of the mount point given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mount_point")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    me = os.getpid()

    def job(step: Callable[[str], None]) -> dict[str, object]:
        step("walk")
        holders, complete = find_holders(
            args.mount_point,
            deadline=time.monotonic() + args.timeout * 0.9,
            exclude={1, me, os.getpid()},
        )
        return {"ok": True, "holders": holders, "complete": complete}

    worker = start_worker(job, args.timeout)
    wait_workers([worker])
    report = worker.report()
    for pid, how in report.get("holders", []):  # type: ignore[attr-defined]
        print(pid, how)
    if not report.get("complete"):
        print("partial", report.get("step", "walk"))


if __name__ == "__main__":
    main()
