"""The fs kit's parameters: the schema, single-value checks and the cross-field rules.

Everything here is pure and fast (``lifekit check`` runs it). :func:`parse` turns a resource's
validated parameters into an :class:`FsConfig`, the one typed record the kit reads, and raises
:class:`~lifekit.errors.ParamError` naming the resource, the parameter, the bad value and what
would be valid, so a bad mount point or a contradictory option is refused before any failover.
"""

from __future__ import annotations

import math
import posixpath
import signal
from collections.abc import Mapping
from typing import Any

import attrs

from lifekit.errors import ParamError
from lifekit.kit import Param, Schema

__all__ = ["FSTYPES", "SCHEMA", "SYSTEM_DIRECTORIES", "FsConfig", "parse", "split_options"]

#: Filesystem types the kit knows how to check, mount and shut down.
FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs", "vfat", "tmpfs")

#: Directories a cluster filesystem must never be mounted on (it would hide the system), and
#: trees under which no mount point may live at all.
SYSTEM_DIRECTORIES = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",  # noqa: S108 - a name to refuse, not a file to use
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/local",
        "/usr/sbin",
        "/usr/share",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/run",
        "/var/tmp",  # noqa: S108 - a name to refuse, not a file to use
    }
)
_PSEUDO_TREES = ("/proc/", "/sys/", "/dev/")

#: Options that contradict each other when both are given.
_OPPOSITES = (
    ("ro", "rw"),
    ("sync", "async"),
    ("atime", "noatime"),
    ("exec", "noexec"),
    ("suid", "nosuid"),
    ("dev", "nodev"),
    ("diratime", "nodiratime"),
    ("relatime", "norelatime"),
    ("relatime", "strictatime"),
    ("noatime", "strictatime"),
    ("lazytime", "nolazytime"),
    ("dirsync", "nodirsync"),
)
#: Options the kit owns or that would change what "the mount" means.
_FORBIDDEN = {
    "remount": "the kit remounts by itself when it recovers",
    "bind": "a bind mount is not a filesystem resource",
    "rbind": "a bind mount is not a filesystem resource",
    "move": "the kit mounts at mount_point itself",
    "loop": "give the block device (a loop device made beforehand), not a file",
}

SIGNALS = {sig.name.removeprefix("SIG") for sig in signal.Signals}


def split_options(options: list[str]) -> list[str]:
    """Flatten ``["rw,noatime", "data=ordered"]`` to single options, in order, blanks dropped."""
    return [part.strip() for item in options for part in item.split(",") if part.strip()]


def _device_problem(value: Any) -> str | None:
    if isinstance(value, str) and value:
        if value.startswith("/") and posixpath.normpath(value) == value:
            return None
        for prefix in ("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL="):
            if value.startswith(prefix) and len(value) > len(prefix) and "/" not in value:
                return None
        if "/" not in value and "=" not in value and "," not in value:
            return None  # a name, valid for tmpfs only (validate checks the type)
    return "an absolute device path such as '/dev/sdb1', or 'UUID=...' or 'LABEL=...'"


def _mount_point_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.startswith("/"):
        return "an absolute directory path such as '/srv/data' (not relative)"
    if posixpath.normpath(value) != value or value.startswith("//"):
        return f"a normalized absolute path, e.g. {posixpath.normpath('/' + value.lstrip('/'))!r}"
    if value in SYSTEM_DIRECTORIES or any(value.startswith(tree) for tree in _PSEUDO_TREES):
        return (
            "a dedicated directory, not '/', a system directory or one under /proc, /sys "
            "or /dev (e.g. '/srv/data' or '/mnt/data')"
        )
    if any(char in value for char in ("\n", "\t", "\\")):
        return "a path without newlines, tabs or backslashes"
    return None


def _options_problem(value: Any) -> str | None:
    options = split_options(value)
    for option in options:
        if option in _FORBIDDEN:
            return f"options without {option!r} ({_FORBIDDEN[option]})"
        if any(char.isspace() for char in option):
            return f"options without spaces; {option!r} has one"
    present = set(options)
    for first, second in _OPPOSITES:
        if first in present and second in present:
            return f"options without contradictions: {first!r} and {second!r} are both given"
    seen: dict[str, str] = {}
    for option in options:
        if "=" in option:
            key, _, given = option.partition("=")
            if key in seen and seen[key] != given:
                return (
                    f"each option once: {key}={seen[key]} and {key}={given} contradict each other"
                )
            seen[key] = given
    return None


def _percent_problem(value: Any) -> str | None:
    if isinstance(value, int) and 0 <= value <= 100:
        return None
    return "a whole percentage from 1 to 100, or 0 to turn the threshold off"


def _seconds_problem(value: Any) -> str | None:
    if isinstance(value, float) and math.isfinite(value) and value > 0:
        return None
    return "a number of seconds > 0, e.g. 5"


def _delay_problem(value: Any) -> str | None:
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return None
    return "a number of seconds >= 0, e.g. 1"


def _signals_problem(value: Any) -> str | None:
    for name in value:
        if name.upper().removeprefix("SIG") not in SIGNALS:
            return f"signal names such as 'TERM' or 'KILL'; {name!r} is not one"
    return None


SCHEMA = Schema(
    [
        Param(
            "device",
            str,
            required=True,
            unique=True,
            check=_device_problem,
            description="the block device: an absolute path, UUID=... or LABEL=...",
        ),
        Param(
            "mount_point",
            str,
            required=True,
            unique=True,
            check=_mount_point_problem,
            description="where it is mounted: an absolute, dedicated, empty directory",
        ),
        Param(
            "fstype",
            str,
            required=True,
            choices=FSTYPES,
            description="the filesystem type",
        ),
        Param(
            "options",
            list,
            default=[],
            check=_options_problem,
            description='mount options, e.g. ["noatime", "data=ordered"] (items may be comma '
            "lists); contradictory pairs are refused",
        ),
        Param(
            "fsck",
            str,
            default="auto",
            choices=("auto", "force", "never"),
            description="filesystem check before mounting: auto (replay the journal, check "
            "if marked dirty), force (full check), never",
        ),
        Param(
            "capacity_warn",
            int,
            default=90,
            check=_percent_problem,
            description="percent used at which quickcheck reports degraded (ISU); 0 = off",
        ),
        Param(
            "capacity_error",
            int,
            default=95,
            check=_percent_problem,
            description="percent used at which quickcheck reports degraded with a capacity "
            "error (logged at error level); 0 = off",
        ),
        Param(
            "signals",
            list,
            default=["TERM", "KILL"],
            check=_signals_problem,
            description="signals sent in turn to processes holding the mount on remove; "
            "[] = never signal (a busy mount then fails the remove)",
        ),
        Param(
            "holder_delay",
            float,
            default=1.0,
            check=_delay_problem,
            description="seconds to wait for holders to exit after each signal",
        ),
        Param(
            "lazy_unmount",
            bool,
            default=False,
            description="last resort when the mount stays busy after every signal: detach it "
            "lazily (umount -l) and report it; off = the remove fails",
        ),
        Param(
            "unmount_timeout",
            float,
            default=10.0,
            check=_seconds_problem,
            description="seconds an umount may take (it flushes data) before it is abandoned",
        ),
        Param(
            "check_depth",
            str,
            default="mounted",
            choices=("mounted", "read", "write"),
            description="quickcheck depth: mounted (mountinfo and options), read (also a "
            "direct read of the device), write (also a write and fsync of a small file)",
        ),
        Param(
            "probe_timeout",
            float,
            default=5.0,
            check=_seconds_problem,
            description="seconds a probe (read, write, capacity) may take before the "
            "resource is reported failed; the probe is abandoned, never waited for",
        ),
    ]
)


@attrs.frozen
class FsConfig:
    """One resource's validated parameters, typed."""

    device: str
    mount_point: str
    fstype: str
    options: tuple[str, ...]
    fsck: str
    capacity_warn: int
    capacity_error: int
    signals: tuple[str, ...]
    holder_delay: float
    lazy_unmount: bool
    unmount_timeout: float
    check_depth: str
    probe_timeout: float

    @property
    def by_name(self) -> bool:
        """Whether the device is named by UUID=/LABEL= and must be looked up on the node."""
        return "=" in self.device

    @property
    def block(self) -> bool:
        """Whether the filesystem lives on a block device (every type but tmpfs)."""
        return self.fstype != "tmpfs"


def parse(tag: str, params: Mapping[str, Any]) -> FsConfig:
    """The typed record of parameters that passed the schema; cross-field rules checked.

    :raises ParamError: naming the parameter, the bad value and what would be valid.
    """
    device = params["device"]
    fstype = params["fstype"]
    if fstype == "tmpfs":
        if device.startswith("/") or "=" in device:
            raise ParamError(
                tag, "device", device, "a name for a tmpfs (e.g. 'tmpfs'), not a device"
            )
    elif not (device.startswith("/") or "=" in device):
        raise ParamError(
            tag,
            "device",
            device,
            f"an absolute device path, UUID=... or LABEL=... for {fstype} (a bare name is "
            "only valid for tmpfs)",
        )
    warn, error = params["capacity_warn"], params["capacity_error"]
    if warn and error and warn > error:
        raise ParamError(
            tag,
            "capacity_warn",
            warn,
            f"a threshold at or below capacity_error ({error})",
        )
    options = tuple(split_options(params["options"]))
    if params["check_depth"] == "write" and "ro" in options:
        raise ParamError(
            tag,
            "check_depth",
            "write",
            "'mounted' or 'read': the mount is read-only (options include 'ro')",
        )
    return FsConfig(
        device=device,
        mount_point=params["mount_point"],
        fstype=fstype,
        options=options,
        fsck=params["fsck"],
        capacity_warn=warn,
        capacity_error=error,
        signals=tuple(name.upper().removeprefix("SIG") for name in params["signals"]),
        holder_delay=float(params["holder_delay"]),
        lazy_unmount=params["lazy_unmount"],
        unmount_timeout=float(params["unmount_timeout"]),
        check_depth=params["check_depth"],
        probe_timeout=float(params["probe_timeout"]),
    )
