"""The hooks a kit package implements (pluggy, project name ``"lifekit"``).

pluggy cannot await, so hooks are synchronous and return kit *objects*; the runtime awaits
their methods (the way ``pytest_collect_file`` returns collectors). Specs grow by adding
keyword arguments; an implementation may accept any subset of them. Every hook is called with
keyword arguments only, and an implementation of a hook not listed here is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from lifekit.kit import Kit

__all__ = ["hookspec", "lifekit_kits"]

#: Marks a hook specification.
hookspec = pluggy.HookspecMarker("lifekit")


@hookspec
def lifekit_kits(node_name: str) -> list[Kit]:  # type: ignore[empty-body]
    """Return new kit objects for a node that is starting.

    Called once per node; the objects live as long as the node. Return fresh objects each
    call: two nodes in one process (a lab, a test) must not share kit state.

    :param node_name: the node the kits are for.
    """
