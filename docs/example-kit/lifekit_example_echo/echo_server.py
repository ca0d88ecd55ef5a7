"""A tiny TCP echo server and its health check: the program the example kit protects.

Usage::

    python echo_server.py serve ADDRESS PORT        # serve in the foreground until killed
    python echo_server.py check ADDRESS PORT [...]  # one line per port: PORT ok|down|broken ...

``check`` exits 0 whenever it could check, printing for each port ``ok`` (it echoed),
``down`` (nothing listens: connection refused) or ``broken <why>`` (something listens but does
not echo). It is one process for any number of ports, so the kit checks every echo resource of
a node in one call.

Standard library only: the kit runs this file on the node through its host and never imports
it, the way a real kit runs a database's own control tool.
"""

from __future__ import annotations

import socket
import socketserver
import sys

_PROBE = b"lifekit-check\n"


class _EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class _EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(address: str, port: int) -> None:
    """Echo every line back until killed (SIGTERM ends it at once)."""
    with _EchoServer((address, port), _EchoHandler) as server:
        print(f"echo server listening on {address}:{port}", flush=True)
        server.serve_forever()


def check(address: str, port: int, *, timeout: float = 2.0) -> str:
    """``ok``, ``down`` or ``broken <why>`` for one port."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.sendall(_PROBE)
            reply = conn.makefile("rb").readline()
    except ConnectionRefusedError:
        return "down"
    except OSError as exc:
        return f"broken {exc}"
    return "ok" if reply == _PROBE else f"broken unexpected reply {reply[:40]!r}"


def main(argv: list[str]) -> int:
    """Command-line entry point; returns the exit status."""
    if len(argv) >= 3 and argv[0] == "serve":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) >= 3 and argv[0] == "check":
        for port in argv[2:]:
            print(port, check(argv[1], int(port)), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
