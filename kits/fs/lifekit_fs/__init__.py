"""lifekit's ``fs``kit (being written)."""

from __future__ import annotations

from lifekit.kit import Kit, hookimpl

__all__ = ["lifekit_kits"]


@hookimpl
def lifekit_kits(node_name: str) -> list[Kit]:
    """Return a fresh kit for the node."""
    return []
