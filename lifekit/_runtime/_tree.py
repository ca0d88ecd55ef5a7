"""Renders a status document as the live tree ``lifekit up`` and ``lifekit status`` print."""

from __future__ import annotations

import datetime
from typing import Any

import attrs

__all__ = ["render_event", "render_tree"]

_COLOURS = {"ISP": "32", "ISU": "33", "OSU": "37", "OSF": "31", "UNKNOWN": "36"}
#: Deeper levels are summarised: a 1,000-long chain must not print 1,000 indents.
MAX_DEPTH = 12


def _state(state: str, colour: bool) -> str:
    text = f"{state:<7}"
    return f"\x1b[{_COLOURS.get(state, '0')}m{text}\x1b[0m" if colour else text


def _age(at: str | None, now: datetime.datetime) -> str:
    if at is None:
        return ""
    then = datetime.datetime.fromisoformat(at)
    return f"{max(0.0, (now - then).total_seconds()):.1f}s ago"


def render_tree(document: dict[str, Any], *, colour: bool = False) -> str:
    """The status document as an indented tree: each hierarchy, then its resources."""
    now = datetime.datetime.fromisoformat(document["generated_at"])
    lines = [
        f"lifekit node {document['node']}  ·  {len(document['hierarchies'])} hierarchies  ·  "
        f"up {document['uptime']:.0f}s  ·  {document['generated_at']}"
    ]
    if document.get("engine_error"):
        lines.append(f"ENGINE FAILED, node stopped acting: {document['engine_error']}")
    for hierarchy in document["hierarchies"]:
        by_tag = {res["tag"]: res for res in hierarchy["resources"]}
        lines.append("")
        # Iterative depth-first walk from the root; shared children are shown under each parent.
        stack: list[tuple[str, int, str]] = [(hierarchy["root"], 0, "")]
        while stack:
            tag, depth, prefix = stack.pop()
            res = by_tag[tag]
            if depth > MAX_DEPTH:
                lines.append(f"{prefix}… (deeper resources not shown)")
                continue
            check = res["last_check"]
            checked = ""
            if check is not None:
                checked = f"  [check {check['outcome']} {_age(check['at'], now)}]"
            action = f"  ({res['action']}…)" if res["action"] else ""
            fence = "  FENCING REQUIRED" if res["fencing_required"] else ""
            lines.append(
                f"{prefix}{tag} {_state(res['state'], colour)}{res['kind']:<6} "
                f"{res['reason']}{action}{checked}{fence}"
            )
            children = res["depends_on"]
            child_prefix = "  " * (depth + 1) + "└─ "
            stack.extend((child, depth + 1, child_prefix) for child in reversed(children))
        if hierarchy["failed"]:
            lines.append(f"  hierarchy failed: {hierarchy['failed']}")
    return "\n".join(lines)


def render_event(event: object, *, since: float = 0.0) -> str:
    """One notification as a line: time since ``since``, its name, and its fields."""
    fields = attrs.asdict(event, recurse=False)  # type: ignore[arg-type]
    at = fields.pop("at", since)
    parts = []
    for key, value in fields.items():
        shown = getattr(value, "value", value)
        if hasattr(value, "outcome"):
            shown = str(value)
        parts.append(f"{key}={shown}")
    return f"+{at - since:7.2f}s {type(event).__name__:<22} " + " ".join(parts)
