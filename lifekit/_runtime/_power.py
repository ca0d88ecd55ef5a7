"""The one seam for drastic node actions: halt and reboot.

Nothing in lifekit calls ``reboot`` or ``halt`` directly; it asks a :class:`PowerControl`.
Test nodes share one kernel, so the default refuses and only logs; a production node
configures :class:`SystemPowerControl`, and the lab (a later issue) turns a node's request into
that node's simulated power loss.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from lifekit._runner import run_process

__all__ = ["PowerControl", "RecordingPowerControl", "RefusingPowerControl", "SystemPowerControl"]

_log = logging.getLogger("lifekit.power")


@runtime_checkable
class PowerControl(Protocol):
    """Halts or reboots this node, or refuses to."""

    async def halt(self, reason: str) -> None:
        """Stop this node now (self-fencing)."""
        ...

    async def reboot(self, reason: str) -> None:
        """Reboot this node now (self-fencing)."""
        ...

    async def engine_failed(self, reason: str) -> None:
        """The engine poisoned itself: self-fence if this node's policy says so."""
        ...


class RefusingPowerControl:
    """The default: log the request loudly and do nothing (safe on a shared test kernel)."""

    async def halt(self, reason: str) -> None:
        """Refuse, logging why a halt was wanted."""
        _log.critical("halt requested but refused (no power control configured): %s", reason)

    async def reboot(self, reason: str) -> None:
        """Refuse, logging why a reboot was wanted."""
        _log.critical("reboot requested but refused (no power control configured): %s", reason)

    async def engine_failed(self, reason: str) -> None:
        """Do nothing more: the node already stopped acting on its resources."""
        _log.critical("engine failed; not self-fencing (no power control configured): %s", reason)


class RecordingPowerControl:
    """Records requests instead of acting: for tests and embedding in simulators."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    async def halt(self, reason: str) -> None:
        """Record a halt."""
        self.requests.append(("halt", reason))

    async def reboot(self, reason: str) -> None:
        """Record a reboot."""
        self.requests.append(("reboot", reason))

    async def engine_failed(self, reason: str) -> None:
        """Record the engine failure."""
        self.requests.append(("engine_failed", reason))


class SystemPowerControl:
    """Really halts or reboots this machine, at once and without a clean shutdown.

    :param self_fence_on_engine_failure: reboot when the engine fails, so peers can take
        over safely (the default for a cluster member).
    """

    def __init__(self, *, self_fence_on_engine_failure: bool = True) -> None:
        self._self_fence = self_fence_on_engine_failure

    async def halt(self, reason: str) -> None:
        """``systemctl poweroff --force --force`` (no unmounting: this is fencing)."""
        _log.critical("halting this node: %s", reason)
        await run_process(["systemctl", "poweroff", "--force", "--force"], timeout=10.0)

    async def reboot(self, reason: str) -> None:
        """``systemctl reboot --force --force`` (no unmounting: this is fencing)."""
        _log.critical("rebooting this node: %s", reason)
        await run_process(["systemctl", "reboot", "--force", "--force"], timeout=10.0)

    async def engine_failed(self, reason: str) -> None:
        """Reboot if configured to self-fence."""
        if self._self_fence:
            await self.reboot(f"engine failed: {reason}")
