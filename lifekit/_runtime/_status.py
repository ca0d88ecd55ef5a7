"""The status document: a stable, versioned JSON picture of one node (see docs/status.md).

``STATUS_VERSION`` changes only when a field is removed or changes meaning; new fields may be
added within a version. Consumers must ignore fields they do not know.
"""

from __future__ import annotations

import datetime
from typing import Any

from lifekit._engine import EngineSnapshot
from lifekit._model import Model

__all__ = ["STATUS_VERSION", "status_document"]

#: The version of the status document's format.
STATUS_VERSION = 1


def _iso(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_document(
    *,
    node: str,
    model: Model,
    snapshot: EngineSnapshot,
    wall_now: float,
    monotonic_now: float,
    uptime: float,
    engine_error: str | None,
) -> dict[str, Any]:
    """Build the status document from an engine snapshot.

    :param wall_now: the wall clock now (for absolute timestamps).
    :param monotonic_now: the engine's clock now (engine times are converted with it).
    """
    from lifekit import __version__  # noqa: PLC0415 - avoids an import cycle at start-up

    def wall(at: float | None) -> str | None:
        return None if at is None else _iso(wall_now - (monotonic_now - at))

    hierarchies = []
    for root, hierarchy in model.hierarchies.items():
        status = snapshot.hierarchies[root]
        resources = []
        for tag in reversed(hierarchy.members):
            res = snapshot.resources[tag]
            last = res.last_check
            resources.append(
                {
                    "tag": tag,
                    "kind": res.kind,
                    "state": res.state.value,
                    "reason": res.reason,
                    "depends_on": list(model.resources[tag].depends_on),
                    "action": res.action.value if res.action else None,
                    "last_check": None
                    if last is None
                    else {
                        "at": wall(res.last_check_at),
                        "outcome": last.outcome.value,
                        "reason": last.reason,
                    },
                    "recent_recoveries": res.recent_recoveries,
                    "fencing_required": res.fencing_required,
                }
            )
        hierarchies.append(
            {
                "root": root,
                "state": status.state.value,
                "reason": status.reason,
                "wanted_in_service": status.wanted_in_service,
                "failed": status.failed,
                "nodes": list(model.eligible_nodes(root)),
                "switchback": hierarchy.switchback.value,
                "resources": resources,
            }
        )
    return {
        "status_version": STATUS_VERSION,
        "lifekit_version": __version__,
        "node": node,
        "generated_at": _iso(wall_now),
        "uptime": round(uptime, 3),
        "engine_error": engine_error,
        "shutting_down": snapshot.shutting_down,
        "actions_in_flight": snapshot.actions_in_flight,
        "hierarchies": hierarchies,
    }
