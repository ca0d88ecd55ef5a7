"""The anyio runtime around the pure engine: nodes, status, the power seam, the control socket."""

from lifekit._runtime._node import EventsOverflowed, EventStream, Node, NodeStatistics
from lifekit._runtime._power import (
    PowerControl,
    RecordingPowerControl,
    RefusingPowerControl,
    SystemPowerControl,
)
from lifekit._runtime._status import STATUS_VERSION, status_document

__all__ = [
    "STATUS_VERSION",
    "EventStream",
    "EventsOverflowed",
    "Node",
    "NodeStatistics",
    "PowerControl",
    "RecordingPowerControl",
    "RefusingPowerControl",
    "SystemPowerControl",
    "status_document",
]
