"""The lab's contact with the kernel: commands, cgroups, process liveness, loop devices.

Everything here is synchronous (the lab is tooling, not the runtime) and small. Commands run
with :func:`run`, which raises :class:`~lifekit.errors.ProcessError` naming the command and the
tail of its standard error. Cgroups are cgroup v2 (``cgroup.freeze`` to hang a node,
``cgroup.kill`` to kill every process of a node at one instant, double-forked daemons
included, because a process cannot leave its cgroup on its own).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from lifekit.errors import LabError, ProcessError

__all__: list[str] = []

#: The ioctl that shuts a filesystem down at once (ext4 and xfs share it: ``_IOR('X', 125,
#: __u32)``), and its flag for "do not flush the log": the on-disk image is then what a power
#: loss leaves, and a later mount or fsck must replay the journal.
FS_IOC_SHUTDOWN = 0x8004587D
SHUTDOWN_NOLOGFLUSH = 2


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion; raise :class:`ProcessError` if it fails and ``check``."""
    environment = None if env is None else {**os.environ, **env}
    try:
        done = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            env=environment,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise ProcessError(
            argv, None, reason="not found; `lifekit lab doctor` names the package to install"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(argv, None, reason=f"did not finish within {timeout:g} s") from exc
    if check and done.returncode != 0:
        raise ProcessError(argv, done.returncode, done.stderr.decode(errors="replace"))
    return done


# --- processes -------------------------------------------------------------------------------


def proc_state(pid: int) -> str | None:
    """A process's state letter from ``/proc/<pid>/stat``, or ``None`` if it is gone.

    Zombies count as gone for every caller: PID 1 of this kind of machine reaps orphans late
    (or never), so ``kill -0`` would report dead processes alive.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain ") ": split at the last one.
    return stat[stat.rindex(b")") + 2 :].split(b" ", 1)[0].decode()


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (field 22), to tell reused PIDs apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(b")") + 2 :].split(b" ")[19])


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if given, started at ``started``."""
    state = proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    return started is None or start_time(pid) == started


def cmdline(pid: int) -> list[str]:
    """A process's argv, or ``[]`` if it is gone or a kernel thread."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def comm(pid: int) -> str:
    """A process's command name (at most 15 characters), or ``""`` if it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def wait_gone(pids: Sequence[int], *, timeout: float) -> bool:
    """Wait until none of ``pids`` runs; whether that happened within ``timeout``."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def signal_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --- cgroup v2 -------------------------------------------------------------------------------


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or ``.../unified``)."""
    candidates = []
    with open("/proc/self/mountinfo") as file:
        for line in file:
            fields = line.split()
            separator = fields.index("-")
            if fields[separator + 1] == "cgroup2":
                candidates.append(Path(fields[4]))
    for path in candidates:
        if (path / "cgroup.procs").exists():
            return path
    raise LabError(
        "no cgroup v2 hierarchy is mounted; the lab needs one to freeze and kill a node's "
        "processes: mount it with `mount -t cgroup2 none /sys/fs/cgroup/unified` (or boot "
        "with cgroup v2), then check with `lifekit lab doctor`"
    )


def cgroup_create(path: Path) -> None:
    """Create a cgroup (and its parents) if it does not exist."""
    path.mkdir(parents=True, exist_ok=True)


def cgroup_procs(path: Path) -> list[int]:
    """The PIDs in one cgroup (not its children), as seen from this namespace."""
    try:
        text = (path / "cgroup.procs").read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split()]


def cgroup_all_procs(path: Path) -> list[int]:
    """The PIDs in a cgroup and all its descendants."""
    pids: list[int] = []
    if path.is_dir():
        for directory, _subdirs, _files in os.walk(path):
            pids.extend(cgroup_procs(Path(directory)))
    return pids


def cgroup_populated(path: Path) -> bool:
    """Whether any process is left in the cgroup or below it."""
    try:
        events = (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    return "populated 1" in events


def cgroup_freeze(path: Path, frozen: bool, *, timeout: float = 2.0) -> bool:
    """Freeze (every process stops where it is) or thaw a cgroup and everything below it.

    Freezing waits until the kernel reports the cgroup frozen. A process stuck in
    uninterruptible I/O cannot freeze until its I/O ends; after ``timeout`` seconds this
    returns ``False`` (the rest of the cgroup is frozen by then). Thawing does not wait.
    """
    (path / "cgroup.freeze").write_text("1" if frozen else "0")
    if not frozen:
        return True
    deadline = time.monotonic() + timeout
    while not cgroup_frozen(path):
        if not cgroup_populated(path):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def cgroup_frozen(path: Path) -> bool:
    """Whether the cgroup is frozen, by itself or by an ancestor."""
    try:
        return "frozen 1" in (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return False


def cgroup_kill(path: Path, *, timeout: float = 10.0) -> None:
    """SIGKILL every process in the cgroup and below, at one instant, and wait until they exit.

    ``cgroup.kill`` kills the whole subtree atomically (a process forking at that moment cannot
    escape). A frozen process dies too. Zombies left for a late-reaping PID 1 do not count.
    """
    if not path.is_dir():
        return
    try:
        (path / "cgroup.kill").write_text("1")
    except FileNotFoundError:  # a kernel older than 5.14: kill one by one, repeatedly
        for _ in range(50):
            pids = cgroup_all_procs(path)
            if not pids:
                break
            for pid in pids:
                signal_pid(pid)
            time.sleep(0.01)
    deadline = time.monotonic() + timeout
    while cgroup_populated(path):
        # Zombies still count as members until reaped; stop waiting once none runs.
        if not any(alive(pid) for pid in cgroup_all_procs(path)):
            return
        if time.monotonic() > deadline:
            raise LabError(
                f"processes of cgroup {path} survived SIGKILL for {timeout:g} s "
                f"(stuck in the kernel?): {cgroup_all_procs(path)}"
            )
        time.sleep(0.005)


def cgroup_remove(path: Path) -> None:
    """Remove a cgroup tree (children first); its processes must be gone."""
    if not path.is_dir():
        return
    for directory, subdirs, _files in os.walk(path, topdown=False):
        del subdirs
        deadline = time.monotonic() + 5.0
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # EBUSY while the last zombies of the cgroup are being released.
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise LabError(f"cannot remove cgroup {directory}: {exc}") from exc
                time.sleep(0.01)


# --- network namespaces ----------------------------------------------------------------------

NETNS_DIR = Path("/run/netns")


def netns_list() -> list[str]:
    """The named network namespaces (``ip netns``)."""
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


# --- loop devices ----------------------------------------------------------------------------


def loop_devices() -> dict[str, str]:
    """Every attached loop device and its backing file, e.g. ``{"/dev/loop3": "/x/lun.img"}``."""
    devices = {}
    for entry in Path("/sys/block").glob("loop*"):
        backing = entry / "loop" / "backing_file"
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            devices[f"/dev/{entry.name}"] = backing.read_text().strip()
    return devices


def wait_unused(device: str, *, timeout: float = 5.0) -> bool:
    """Wait until no filesystem holds ``device`` (an exclusive open succeeds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(device, os.O_RDONLY | os.O_EXCL)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        else:
            os.close(fd)
            return True


def loop_detach(device: str) -> None:
    """Detach a loop device (the kernel finishes it once its last user closes it)."""
    run(["losetup", "--detach", device], check=False)


def shutdown_filesystem(path: str) -> None:
    """Shut the filesystem mounted at ``path`` down without flushing its log (a power loss)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_SHUTDOWN, SHUTDOWN_NOLOGFLUSH.to_bytes(4, "little"))
    finally:
        os.close(fd)


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ``\\011``, ``\\012``, ``\\134``)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def mount_namespace(pid: int) -> str | None:
    """An identifier of a process's mount namespace (``mnt:[4026532...]``), or ``None``."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def mounts_of(pid: int) -> Iterator[tuple[int, str, str]]:
    """The mounts a process sees: ``(device number, mount point, filesystem type)``."""
    try:
        with open(f"/proc/{pid}/mountinfo") as file:
            lines = file.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return
    for line in lines:
        fields = line.split()
        major, minor = (int(part) for part in fields[2].split(":"))
        separator = fields.index("-")
        mount_point = _unescape(fields[4])
        yield os.makedev(major, minor), mount_point, fields[separator + 1]


def device_numbers(devices: Iterable[str | None]) -> set[int]:
    """The device numbers of the block devices that exist among ``devices``."""
    numbers = set()
    for device in devices:
        if device:
            with contextlib.suppress(FileNotFoundError):
                numbers.add(os.stat(device).st_rdev)
    return numbers


def namespace_mounts(pids: Iterable[int]) -> Iterator[tuple[int, int, str, str]]:
    """``(pid, device number, mount point, fstype)`` of every mount the processes see, reading
    each mount namespace once (through one of its processes)."""
    seen: set[str] = set()
    for pid in pids:
        namespace = mount_namespace(pid)
        if namespace is None or namespace in seen:
            continue
        seen.add(namespace)
        for number, mount_point, fstype in mounts_of(pid):
            yield pid, number, mount_point, fstype


def shutdown_mounts(mounts: Iterable[tuple[int, int, str, str]], numbers: set[int]) -> list[str]:
    """Shut down, without a log flush, each filesystem on one of the devices ``numbers`` once;
    return the ones that refused, named with the reason."""
    failed = []
    done: set[int] = set()
    for pid, number, mount_point, fstype in mounts:
        if number in numbers and number not in done:
            done.add(number)
            try:
                shutdown_filesystem(f"/proc/{pid}/root{mount_point}")
            except OSError as exc:
                failed.append(f"{mount_point} ({fstype}): {exc.strerror or exc}")
    return failed
