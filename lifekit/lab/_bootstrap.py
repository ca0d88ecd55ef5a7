"""What the lab needs from this machine: ``lifekit lab doctor`` checks, ``bootstrap`` installs.

:data:`PACKAGES` is the one list of Debian packages the lab and the bundled kits' tests use,
each with the commands (or files) that show it is there. :func:`check` reports every missing
package and kernel feature with the fix; :func:`bootstrap` installs the missing packages with
``apt-get`` (printing them first) and is idempotent: a second run installs nothing.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs

from lifekit.errors import LabError
from lifekit.lab import _sys

__all__: list[str] = []


@attrs.frozen
class Package:
    """A Debian package, why the lab needs it, and the files that show it is installed."""

    name: str
    why: str
    provides: tuple[str, ...]


PACKAGES = (
    Package("iproute2", "namespaces, veths, bridges (ip, tc)", ("ip", "tc")),
    Package("util-linux", "nsenter, unshare, findmnt", ("nsenter", "unshare", "findmnt")),
    Package("mount", "losetup, mount", ("losetup", "mount")),
    Package("procps", "ps, pgrep in tests", ("ps",)),
    Package("e2fsprogs", "ext4 on the shared LUN (mkfs.ext4, e2fsck)", ("mkfs.ext4", "e2fsck")),
    Package("xfsprogs", "xfs on the shared LUN (mkfs.xfs, xfs_io)", ("mkfs.xfs", "xfs_io")),
    Package("nftables", "partitions and packet loss in the switch (nft)", ("nft",)),
    Package("iputils-ping", "connectivity checks (ping)", ("ping",)),
    Package("iputils-arping", "gratuitous ARP after moving an address", ("arping",)),
    Package("tgt", "the iSCSI target with SCSI-3 reservations (tgtd)", ("tgtd", "tgtadm")),
    Package(
        "libiscsi7",
        "the userspace iSCSI initiator",
        ("lib:iscsi",),
    ),
    Package("nbdkit", "the NBD server of the fenced path", ("nbdkit",)),
    Package(
        "nbdkit-plugin-python",
        "the fenced path's iSCSI plugin",
        ("/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-python-plugin.so",),
    ),
    Package("libnbd-bin", "nbdfuse: the fenced path's block device", ("nbdfuse",)),
    Package("fuse3", "FUSE for nbdfuse (fusermount3)", ("fusermount3",)),
    Package("python3", "the interpreter nbdkit's plugin runs in", ("/usr/bin/python3",)),
)


def _present(item: str) -> bool:
    if item.startswith("lib:"):
        return ctypes.util.find_library(item[4:]) is not None
    if item.startswith("/"):
        return Path(item).exists()
    return shutil.which(item) is not None


def missing_packages() -> list[Package]:
    """The packages whose files are not all on this machine."""
    return [package for package in PACKAGES if not all(_present(item) for item in package.provides)]


def _cgroup_check() -> str | None:
    try:
        root = _sys.cgroup2_root()
    except LabError as exc:
        return str(exc)
    if not (root / "cgroup.procs").exists():
        return f"cgroup v2 at {root} has no cgroup.procs"
    return None


def _kernel_checks() -> list[tuple[str, Callable[[], str | None]]]:
    return [
        ("root", lambda: None if os.geteuid() == 0 else "the lab needs root: run as root"),
        ("cgroup v2", _cgroup_check),
        (
            "network namespaces",
            lambda: (
                None
                if Path("/proc/self/ns/net").exists()
                else "the kernel has no network namespaces (CONFIG_NET_NS)"
            ),
        ),
        (
            "loop devices",
            lambda: (
                None
                if Path("/dev/loop-control").exists()
                else "no /dev/loop-control: the kernel needs CONFIG_BLK_DEV_LOOP"
            ),
        ),
        (
            "FUSE",
            lambda: (
                None
                if Path("/dev/fuse").exists()
                else "no /dev/fuse: the fenced path needs CONFIG_FUSE_FS"
            ),
        ),
    ]


def check() -> list[tuple[str, str | None, str]]:
    """Every requirement: ``(what, problem or None, fix)``."""
    results: list[tuple[str, str | None, str]] = []
    for what, probe in _kernel_checks():
        problem = probe()
        results.append((what, problem, "" if problem is None else problem))
    absent = {package.name for package in missing_packages()}
    for package in PACKAGES:
        problem = None
        if package.name in absent:
            lacking = [item for item in package.provides if not _present(item)]
            problem = f"missing {', '.join(lacking)}"
        results.append(
            (
                f"package {package.name} ({package.why})",
                problem,
                f"apt-get install {package.name}  (or: lifekit lab bootstrap)",
            )
        )
    return results


def problems() -> list[str]:
    """One line per unmet requirement, with its fix (empty: the lab can run here)."""
    return [f"{what}: {problem} -> {fix}" for what, problem, fix in check() if problem is not None]


def bootstrap(*, echo: Callable[[str], None] = print) -> list[str]:
    """Install the missing Debian packages with apt-get and return their names.

    :raises LabError: not root, no apt-get, or apt-get failed (its output is in the message).
    """
    names = [package.name for package in missing_packages()]
    if not names:
        echo("lab bootstrap: every package is installed")
        return []
    if os.geteuid() != 0:
        raise LabError(f"installing {' '.join(names)} needs root: run as root")
    if shutil.which("apt-get") is None:
        raise LabError(f"no apt-get on this machine: install {' '.join(names)} by hand")
    echo(f"lab bootstrap: installing Debian packages: {' '.join(names)}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *names],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, env=environment, check=False)
        if done.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    still = [package.name for package in missing_packages()]
    if still:
        raise LabError(f"apt-get finished but these are still missing: {' '.join(still)}")
    return names
