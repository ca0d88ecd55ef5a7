"""lifekit's generic application kit: ``kind = "app"``.

Like LifeKeeper's Generic Application and Quick Service Protection kits, with Pacemaker's
OCF exit-status semantics. One kit, three modes, chosen per resource by the ``mode``
parameter:

* ``commands``: ``start``, ``stop`` and ``check`` argv commands (and optionally ``recover``);
  ``check``'s exit status says running, not running, degraded, or how it failed.
* ``supervised``: lifekit starts one foreground ``command`` in its own process group, watches
  it by pid (with its start time, against pid reuse), and adopts it after lifekit restarts.
* ``systemd``: a systemd ``unit``, driven through ``systemctl``.

Registered exactly as a third-party kit is: the distribution's ``lifekit.kits`` entry point
names this module, whose :func:`lifekit_kits` hook returns a fresh :class:`AppKit`. Only
lifekit's public API is used. The reference is ``docs/app-kit.md``.
"""

from __future__ import annotations

from lifekit.kit import Kit, hookimpl
from lifekit_app._kit import AppKit

__all__ = ["AppKit", "lifekit_kits"]


@hookimpl
def lifekit_kits(node_name: str) -> list[Kit]:
    """Return a fresh :class:`AppKit` for the node (kit objects are never shared by nodes).

    :param node_name: the node the kit is for (the app kit needs nothing from it).
    """
    return [AppKit()]
