"""Inside a lab node: the core's power seam and a watchdog, both wired to the lab's controller.

A lifekit daemon running on a lab node is given :class:`LabPowerControl` instead of
:class:`~lifekit.SystemPowerControl`: its halt becomes the node's power loss and its reboot a
power loss and a boot, exactly what the real thing would do to a real server, without touching
this machine. :class:`LabWatchdog` stands in for ``/dev/watchdog``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import anyio

from lifekit.errors import LabError

__all__ = ["LabPowerControl", "LabWatchdog"]

#: Where a node sees its controller's sockets.
BMC_DIR = Path("/run/lifekit-lab/bmc")


def _send(path: Path, message: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode()[:4096], str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise LabError(
                f"no lab controller answers at {path}: this process is not on a lab node, or "
                "the lab's controller is gone (see logs/controller.log in the lab's directory)"
            ) from exc


class LabPowerControl:
    """A :class:`lifekit.PowerControl` for daemons on lab nodes.

    :param self_fence_on_engine_failure: reboot when the engine fails (as
        :class:`~lifekit.SystemPowerControl` does for a cluster member).
    :param bmc_dir: where the controller's sockets are (the default is right on a lab node).
    """

    def __init__(
        self, *, self_fence_on_engine_failure: bool = True, bmc_dir: Path = BMC_DIR
    ) -> None:
        self._self_fence = self_fence_on_engine_failure
        self._socket = bmc_dir / "power.sock"

    async def halt(self, reason: str) -> None:
        """Ask for this node's power loss, then wait for it (it does not return)."""
        _send(self._socket, f"poweroff {reason}")
        await anyio.sleep_forever()

    async def reboot(self, reason: str) -> None:
        """Ask for this node's power loss and boot, then wait for it (it does not return)."""
        _send(self._socket, f"reboot {reason}")
        await anyio.sleep_forever()

    async def engine_failed(self, reason: str) -> None:
        """Reboot if configured to self-fence."""
        if self._self_fence:
            await self.reboot(f"engine failed: {reason}")


class LabWatchdog:
    """This node's watchdog: once armed, it must be fed, or the node loses power.

    :param bmc_dir: where the controller's sockets are (the default is right on a lab node).
    """

    def __init__(self, *, bmc_dir: Path = BMC_DIR) -> None:
        self._socket = bmc_dir / "watchdog.sock"

    def arm(self, timeout: float, *, reboot: bool = False) -> None:
        """Start the watchdog: ``timeout`` seconds without :meth:`feed` cost the node its power
        (and it boots again if ``reboot``)."""
        if not timeout > 0:
            raise ValueError(f"watchdog timeout must be > 0 seconds, got {timeout!r}")
        _send(self._socket, f"arm {timeout!r} {'reboot' if reboot else 'poweroff'}")

    def feed(self) -> None:
        """Reset the countdown."""
        _send(self._socket, "feed")

    def disarm(self) -> None:
        """Stop the watchdog (a clean shutdown's "magic close")."""
        _send(self._socket, "disarm")
