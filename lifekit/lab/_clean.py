"""Finding and removing what a lab left behind, by its unique prefix.

A lab is torn down from what the kernel shows, not only from its state file, so a lab whose
owner was killed mid-way (its state file half-written or missing) is still removed completely:
the cgroup ``lklab-<name>`` (killing every process in it: node daemons, tgtd, nbdkit, the lab's
controller), loop devices whose backing file is in the lab's directory or on one of its
nodes' fenced paths, network namespaces ``lklab-<name>-*``, and the directory itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from lifekit.errors import LabError
from lifekit.lab import _state, _sys

__all__: list[str] = []


_LAB_ID = re.compile(r"lklab-[a-z0-9]+")


def _lab_of(path: str) -> str | None:
    """The lab id a path names (a lab directory, or a fenced path's file), if any."""
    found = _LAB_ID.search(path)
    return found.group(0) if found else None


def loops_of(lab_id: str, directory: Path) -> list[str]:
    """The loop devices of one lab: on its LUN image, or on one of its nodes' fenced paths."""
    inside = f"{directory}/"
    return sorted(
        device
        for device, backing in _sys.loop_devices().items()
        if backing.startswith(inside) or _lab_of(backing) == lab_id
    )


def netns_of(lab_id: str) -> list[str]:
    """The network namespaces of one lab."""
    return [name for name in _sys.netns_list() if name.startswith(f"{lab_id}-")]


def _quiesce(cgroup: Path, lab_id: str, loops: list[str]) -> set[int]:
    """Make the lab's processes safe to kill; return the FUSE connections of its fenced paths.

    A filesystem on a fenced path is served by the node's own nbdfuse: if nbdfuse were the
    last process of the node's mount namespace, its exit would unmount that filesystem, whose
    final flush would wait for nbdfuse itself, forever. So every frozen process is thawed
    (nothing may wait on a frozen storage path) and every filesystem on the lab's storage is
    shut down first: a shut-down filesystem unmounts without any I/O.
    """
    for directory, _subdirs, _files in os.walk(cgroup):
        with contextlib.suppress(OSError):
            _sys.cgroup_freeze(Path(directory), False)
    mounts = list(_sys.namespace_mounts(_sys.cgroup_all_procs(cgroup)))
    _sys.shutdown_mounts(mounts, _sys.device_numbers(loops))  # a refusal cannot stop teardown
    return {
        os.minor(number)
        for _pid, number, mount_point, fstype in mounts
        if fstype.startswith("fuse") and lab_id in mount_point
    }


def _abort_fuse(connections: set[int], scratch: Path) -> None:
    """Abort FUSE connections (their pending requests fail at once), via a private fusectl."""
    if not connections:
        return
    scratch.mkdir(parents=True, exist_ok=True)
    if _sys.run(["mount", "-t", "fusectl", "fusectl", str(scratch)], check=False).returncode:
        return
    try:
        for connection in connections:
            with contextlib.suppress(OSError):
                (scratch / str(connection) / "abort").write_text("1")
    finally:
        _sys.run(["umount", str(scratch)], check=False)
        with contextlib.suppress(OSError):
            scratch.rmdir()


def teardown(lab_id: str, directory: Path, *, keep_directory: bool = False) -> None:
    """Remove every trace of one lab; safe to repeat, and safe on a half-made lab."""
    errors: list[str] = []
    try:
        cgroup: Path | None = _sys.cgroup2_root() / lab_id
    except LabError:
        cgroup = None
    # Found while the nodes live: a fenced path's loop shows the lab's path only until then.
    loops = loops_of(lab_id, directory)
    if cgroup is not None:
        fuse = _quiesce(cgroup, lab_id, loops) if cgroup.is_dir() else set()
        try:
            _sys.cgroup_kill(cgroup, timeout=5.0)
        except LabError:
            # Something still waits on a fenced path: fail its requests, then kill again.
            _abort_fuse(fuse, Path(f"/run/{lab_id}-fusectl"))
            try:
                _sys.cgroup_kill(cgroup)
            except LabError as exc:
                errors.append(str(exc))
    for device in sorted(set(loops) | set(loops_of(lab_id, directory))):
        # A node's mount namespace is released just after its last process; give the kernel a
        # moment so the detach is immediate rather than deferred to the last close.
        _sys.wait_unused(device, timeout=2.0)
        _sys.loop_detach(device)
    names = netns_of(lab_id)
    if names:
        done = _sys.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns del {name}\n" for name in names).encode(),
            check=False,
        )
        if done.returncode != 0:
            errors.append(done.stderr.decode(errors="replace").strip())
    if cgroup is not None:
        try:
            _sys.cgroup_remove(cgroup)
        except LabError as exc:
            errors.append(str(exc))
    if not keep_directory:
        shutil.rmtree(directory, ignore_errors=True)
    if errors:
        raise LabError(f"lab {lab_id} was not removed completely: " + "; ".join(errors))


def leftovers(lab_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Kernel objects and directories of labs, by lab id (all labs, or the ones given)."""
    wanted = None if lab_ids is None else set(lab_ids)
    found: dict[str, list[str]] = {}

    def add(lab_id: str, what: str) -> None:
        if wanted is None or lab_id in wanted:
            found.setdefault(lab_id, []).append(what)

    for name in _sys.netns_list():
        if name.startswith(_state.PREFIX):
            add(name.rsplit("-", 1)[0], f"netns {name}")
    try:
        root = _sys.cgroup2_root()
    except LabError:
        root = None
    if root is not None:
        for entry in root.glob(f"{_state.PREFIX}*"):
            add(entry.name, f"cgroup {entry}")
            for pid in _sys.cgroup_all_procs(entry):
                if _sys.alive(pid):
                    add(entry.name, f"process {pid} {' '.join(_sys.cmdline(pid))[:80]}")
    base = _state.base_dir()
    for device, backing in _sys.loop_devices().items():
        owner = _lab_of(backing)
        if owner is not None:
            add(owner, f"loop {device} -> {backing}")
    if base.is_dir():
        for entry in base.glob(f"{_state.PREFIX}*"):
            add(entry.name, f"directory {entry}")
    return found


#: A lab directory younger than this without a state file is a lab being made, not a leftover.
_MAKING = 60.0


def owner_alive(directory: Path) -> bool:
    """Whether the process that owns a lab still runs (a detached lab counts as owned)."""
    state = _state.read_state(directory)
    if not state:
        try:
            return time.time() - directory.stat().st_mtime < _MAKING
        except FileNotFoundError:
            return False
    owner = state.get("owner")
    if owner is None:
        return True  # detached (`lifekit lab up`): only `down` or `clean NAME` removes it
    return _sys.alive(owner[0], owner[1])


def clean(*, names: Iterable[str] = (), everything: bool = False) -> list[str]:
    """Remove labs' leftovers and return the ids removed.

    :param names: labs to remove whatever their state.
    :param everything: remove every lab, detached ones included.

    Without either, removes the labs whose owner process is dead (a killed test) and stray
    objects with no lab directory here, unless processes still run in them: those may be a
    live lab of another ``$LIFEKIT_LAB_DIR``.
    """
    base = _state.base_dir()
    chosen = {_state.lab_id(name) for name in names}
    if everything or not chosen:
        for lab_id, objects in leftovers().items():
            directory = base / lab_id
            if everything:
                chosen.add(lab_id)
            elif directory.is_dir():
                if not owner_alive(directory):
                    chosen.add(lab_id)
            elif not any(entry.startswith("process ") for entry in objects):
                chosen.add(lab_id)
    for lab_id in sorted(chosen):
        teardown(lab_id, base / lab_id)
    return sorted(chosen)
