"""lifekit's filesystem kit: ``kind = "fs"``, a mounted filesystem.

Like LifeKeeper's File System kit and Pacemaker's ``Filesystem`` agent, built so that none of
their known failures happen: fsck per policy (the journal is replayed after a crash), the
mount's options are verified against mountinfo, holders are found by walking ``/proc`` under
a deadline (never ``fuser`` on a dead mount) and signalled per policy, a lazy unmount happens
only when asked for and is reported, a fenced node shuts the filesystem down without I/O, and
every probe that touches the filesystem runs in a worker that is abandoned at its deadline,
so a hung filesystem can never hang the node.

Registered exactly as a third-party kit is: the distribution's ``lifekit.kits`` entry point
names this module, whose :func:`lifekit_kits` hook returns a fresh :class:`FsKit`. Only
lifekit's public API is used. The reference is ``docs/fs-kit.md``.
"""

from __future__ import annotations

from lifekit.kit import Kit, hookimpl
from lifekit_fs._kit import FsKit

__all__ = ["FsKit", "lifekit_kits"]


@hookimpl
def lifekit_kits(node_name: str) -> list[Kit]:
    """Return a fresh :class:`FsKit` for the node (kit objects are never shared by nodes).

    :param node_name: the node the kit is for (the fs kit needs nothing from it).
    """
    return [FsKit()]
