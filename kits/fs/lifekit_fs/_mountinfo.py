"""Parsing ``/proc/<pid>/mountinfo``: the one source of truth about what is mounted where.

Pure and stdlib-only: the node-side helpers import it as well as the kit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Mount", "parse_mountinfo", "unescape"]


def unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ``\\011``, ``\\012``, ``\\134``)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo.

    :param mount_id: the mount's id (``mnt_id`` in ``/proc/<pid>/fdinfo``).
    :param devno: ``major:minor`` of the filesystem (the block device's for a disk fs).
    :param mount_point: where it is mounted, unescaped.
    :param mount_options: per-mount options (``rw``, ``noatime``, ``nodev`` ...).
    :param fstype: the filesystem type.
    :param source: what was mounted (a device path, or a name for tmpfs).
    :param super_options: the superblock's options (``errors=remount-ro``, ``sync`` ...).
    """

    mount_id: int
    devno: str
    mount_point: str
    mount_options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def options(self) -> frozenset[str]:
        """Per-mount and superblock options together."""
        return frozenset(self.mount_options) | frozenset(self.super_options)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (the helpers print mounts this way)."""
        return {
            "mount_id": self.mount_id,
            "devno": self.devno,
            "mount_point": self.mount_point,
            "mount_options": list(self.mount_options),
            "fstype": self.fstype,
            "source": self.source,
            "super_options": list(self.super_options),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Mount:
        """The inverse of :meth:`to_json`."""
        return cls(
            mount_id=int(str(data["mount_id"])),
            devno=str(data["devno"]),
            mount_point=str(data["mount_point"]),
            mount_options=tuple(str(item) for item in data["mount_options"]),  # type: ignore[attr-defined]
            fstype=str(data["fstype"]),
            source=str(data["source"]),
            super_options=tuple(str(item) for item in data["super_options"]),  # type: ignore[attr-defined]
        )


def parse_mountinfo(text: str) -> list[Mount]:
    """Every mount in ``text`` (the contents of a mountinfo file), in mount order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 10:
            continue
        separator = fields.index("-", 6)
        fstype, source, super_options = fields[separator + 1 : separator + 4]
        mounts.append(
            Mount(
                mount_id=int(fields[0]),
                devno=fields[2],
                mount_point=unescape(fields[4]),
                mount_options=tuple(fields[5].split(",")),
                fstype=fstype,
                source=unescape(source),
                super_options=tuple(super_options.split(",")),
            )
        )
    return mounts
