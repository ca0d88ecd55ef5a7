"""The lab's controller: each node's power button and watchdog, as a server's BMC would be.

One process per lab (``python -m lifekit.lab._controller LAB_NAME``), started by
:meth:`Lab.up <lifekit.lab.Lab.up>` in the lab's cgroup, outside every node. For each node it
binds two datagram sockets in the node's ``bmc`` directory, which the node sees as
``/run/lifekit-lab/bmc/``:

* ``power.sock``: ``poweroff <reason>`` or ``reboot <reason>``. The core's power seam
  (:class:`lifekit.lab.LabPowerControl`) sends these: a node's halt becomes its power loss, a
  reboot a power loss followed by a power on.
* ``watchdog.sock``: ``arm <seconds> [poweroff|reboot]``, ``feed`` and ``disarm``
  (:class:`lifekit.lab.LabWatchdog`). Once armed, a node that is not fed for the armed time
  suffers power loss (and boots again with ``reboot``), as a kernel watchdog would do to a
  real server whose daemon hung. A power loss disarms it.

Everything it does is logged to ``logs/controller.log`` in the lab's directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import sys
import time

from lifekit.errors import LabError
from lifekit.lab._lab import Lab

__all__: list[str] = []

_log = logging.getLogger("lifekit.lab.controller")


class Controller:
    """The power and watchdog sockets of every node of one lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.selector = selectors.DefaultSelector()
        #: node -> (deadline, timeout, action, boot) of an armed watchdog; ``boot`` is the
        #: node's PID 1 when it was armed: a watchdog does not outlive the boot that armed it.
        self.watchdogs: dict[str, tuple[float, float, str, int | None]] = {}
        for node in lab.nodes:
            for kind in ("power", "watchdog"):
                path = node.directory / "bmc" / f"{kind}.sock"
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(str(path))
                os.chmod(path, 0o600)
                self.selector.register(sock, selectors.EVENT_READ, (node.name, kind))

    def serve(self) -> None:
        """Handle requests and watchdog deadlines until killed."""
        while True:
            now = time.monotonic()
            timeout = None
            if self.watchdogs:
                timeout = max(0.0, min(entry[0] for entry in self.watchdogs.values()) - now)
            for key, _mask in self.selector.select(timeout):
                name, kind = key.data
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                self.handle(name, kind, data.decode(errors="replace").strip())
            now = time.monotonic()
            for name, (deadline, seconds, action, boot) in list(self.watchdogs.items()):
                if now >= deadline:
                    del self.watchdogs[name]
                    if self.boot(name) != boot:
                        _log.info("%s: watchdog of an earlier boot expired: ignored", name)
                        continue
                    _log.warning("%s: watchdog not fed for %g s: %s", name, seconds, action)
                    self.power(name, action, f"watchdog expired after {seconds:g} s")

    def handle(self, name: str, kind: str, message: str) -> None:
        """Act on one datagram from node ``name``."""
        word, _, rest = message.partition(" ")
        if kind == "power" and word in ("poweroff", "reboot"):
            self.power(name, word, rest)
        elif kind == "watchdog" and word == "arm":
            seconds, _, action = rest.partition(" ")
            try:
                timeout = float(seconds)
            except ValueError:
                _log.error("%s: bad watchdog timeout %r", name, seconds)
                return
            if timeout <= 0 or action not in ("", "poweroff", "reboot"):
                _log.error("%s: bad watchdog arm request %r", name, message)
                return
            boot = self.boot(name)
            self.watchdogs[name] = (time.monotonic() + timeout, timeout, action or "poweroff", boot)
            _log.info("%s: watchdog armed for %g s", name, timeout)
        elif kind == "watchdog" and word == "feed":
            if name in self.watchdogs:
                _deadline, timeout, action, boot = self.watchdogs[name]
                self.watchdogs[name] = (time.monotonic() + timeout, timeout, action, boot)
        elif kind == "watchdog" and word == "disarm":
            self.watchdogs.pop(name, None)
            _log.info("%s: watchdog disarmed", name)
        else:
            _log.error("%s: unknown %s request %r", name, kind, message)

    def boot(self, name: str) -> int | None:
        """The node's current PID 1 (``None`` while it is off): identifies one boot."""
        try:
            return self.lab.node(name).init_pid()
        except LabError:
            return None

    def power(self, name: str, action: str, reason: str) -> None:
        """Power a node off (and on again for ``reboot``)."""
        _log.warning("%s: %s (%s)", name, action, reason or "no reason given")
        self.watchdogs.pop(name, None)
        node = self.lab.node(name)
        try:
            node.power_loss()
            if action == "reboot":
                node.power_on()
        except Exception:  # noqa: BLE001 - one node's failure must not stop the others' controller
            _log.exception("%s: %s failed", name, action)


def main(argv: list[str]) -> int:
    """Serve one lab's nodes; print ``ready`` once the sockets exist."""
    (name,) = argv
    lab = Lab.attach(name)
    logging.basicConfig(
        filename=lab.directory / "logs" / "controller.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    controller = Controller(lab)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdout.close()
    controller.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
