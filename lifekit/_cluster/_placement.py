"""Placement: which node should run a hierarchy, as a pure function of what a node knows.

Every node computes placement for itself from its own view; nodes with the same inputs get
the same answer, and once heartbeats flow the inputs converge. Placement never makes anything
safe by itself: it only says which node *should* claim a hierarchy; the votes in
:mod:`lifekit._cluster._engine` decide which node *may*.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from lifekit._model import SwitchbackType

__all__ = ["place"]


def place(
    nodes: Sequence[str],
    *,
    switchback: SwitchbackType,
    eligible: Collection[str],
    holders: Collection[str] = (),
) -> str | None:
    """The node that should run one hierarchy, or ``None`` if none can.

    :param nodes: the nodes that may host it, highest priority first (its model node list).
    :param switchback: ``INTELLIGENT`` keeps it on an eligible current holder; ``AUTOMATIC``
        always picks the highest-priority eligible node (a planned move if that is not the
        holder: the holder takes it out first).
    :param eligible: the nodes that may take it now: alive, quorate, not marked failed for it,
        not in maintenance.
    :param holders: the nodes that have it in service or coming in service now (normally at
        most one); with several, the highest-priority eligible one is kept.
    """
    candidates = [node for node in nodes if node in eligible]
    if not candidates:
        return None
    if switchback is SwitchbackType.INTELLIGENT:
        for node in candidates:
            if node in holders:
                return node
    return candidates[0]
