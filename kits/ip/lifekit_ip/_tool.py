"""The ip kit's node-side helper: announcements and pings, run on the node as a process.

The kit runs in lifekit's process, which may not be on the node (a lab node is a network
namespace), so whatever needs raw sockets on the node's network runs here, started through the
node's host as ``python -I -S .../lifekit_ip/_tool.py <command> ...`` (by path, so that
starting it imports nothing but the standard library; ``python -m lifekit_ip._tool`` works too):

* ``announce``: tell the link who holds an address now. IPv4: a gratuitous ARP request (sender
  and target both the address, broadcast), the frame ``arping -U`` sends, on an ``AF_PACKET``
  socket. IPv6: an unsolicited neighbour advertisement (RFC 4861 section 7.2.6) to ff02::1
  with the override flag and the target link-layer address option, on a raw ICMPv6 socket
  (the kernel fills in the checksum). Before each packet it checks that the address is still
  local (a ``bind`` to it succeeds), so a late announcer never claims an address this node
  gave up.
* ``ping``: ICMP echo to many targets at once from given source addresses, one process, one
  deadline; prints a JSON object ``{"SOURCE TARGET": seconds or null}``.

Standard library only; exit status 0 on success, 2 on bad arguments, 1 on any other error
(its reason on stderr).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

_ETH_P_ARP = 0x0806
_ICMP6_NEIGHBOR_ADVERT = 136
_NA_FLAG_OVERRIDE = 0x20000000
_ALL_NODES = "ff02::1"


def _mac(iface: str) -> bytes:
    text = Path(f"/sys/class/net/{iface}/address").read_text().strip()
    return bytes.fromhex(text.replace(":", ""))


def _is_local(address: str) -> bool:
    """Whether ``address`` is assigned here and usable (not tentative): a bind succeeds."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def _garp(iface: str, address: str) -> None:
    mac = _mac(iface)
    ip = socket.inet_aton(address)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\xff" * 6, ip)
    frame = b"\xff" * 6 + mac + struct.pack("!H", _ETH_P_ARP) + arp
    # Protocol 0 and sendto, not bind: a packet socket bound to a protocol hooks into the
    # receive path, and unhooking it at close waits for an RCU grace period (~20 ms).
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.sendto(frame, (iface, _ETH_P_ARP))


def _unsolicited_na(iface: str, address: str) -> None:
    mac = _mac(iface)
    target = socket.inet_pton(socket.AF_INET6, address)
    # type, code, checksum (the kernel computes it), flags, target, option 2 (target
    # link-layer address) of 1 unit of 8 bytes.
    message = struct.pack(
        "!BBHI16sBB6s", _ICMP6_NEIGHBOR_ADVERT, 0, 0, _NA_FLAG_OVERRIDE, target, 2, 1, mac
    )
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        index = socket.if_nametoindex(iface)
        # RFC 4861: neighbour discovery packets carry hop limit 255, or receivers drop them.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.bind((address, 0, 0, 0))
        sock.sendto(message, (_ALL_NODES, 0, 0, index))


def announce(pairs: Sequence[tuple[str, str]], *, count: int, interval: float, delay: float) -> int:
    """Send ``count`` announcements of each (interface, address), ``interval`` seconds apart.

    An address that stopped being usable here is skipped (and reported) from then on.
    """
    if delay > 0:
        time.sleep(delay)
    status = 0
    live = list(pairs)
    for index in range(count):
        if index:
            time.sleep(interval)
        for iface, address in list(live):
            if not _is_local(address):
                print(f"{address} is not usable on this node: not announced", file=sys.stderr)
                live.remove((iface, address))
                status = 1
                continue
            (_unsolicited_na if ":" in address else _garp)(iface, address)
    return status


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(pairs: Sequence[tuple[str, str]], *, timeout: float) -> dict[str, float | None]:
    """Echo every target from its source at once; seconds to each reply, or ``None``."""
    ident = os.getpid() & 0xFFFF
    started = time.monotonic()
    deadline = started + timeout
    pending: dict[tuple[socket.socket, str, int], str] = {}
    results: dict[str, float | None] = {f"{source} {target}": None for source, target in pairs}
    sockets: dict[str, socket.socket] = {}
    try:
        for seq, (source, target) in enumerate(pairs, start=1):
            v6 = ipaddress.ip_address(target).version == 6
            sock = sockets.get(source)
            if sock is None:
                if v6:
                    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                else:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                sock.bind((source, 0))
                sock.setblocking(False)
                sockets[source] = sock
            kind = 128 if v6 else 8
            header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
            payload = b"lifekit-ip"
            if not v6:  # the kernel checksums ICMPv6 only
                header = struct.pack("!BBHHH", kind, 0, _checksum(header + payload), ident, seq)
            try:
                sock.sendto(header + payload, (target, 0))
            except OSError:
                continue  # no route: it stays unanswered
            pending[(sock, ipaddress.ip_address(target).compressed, seq)] = f"{source} {target}"
        while pending and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(sockets.values()), [], [], left)
            for sock in ready:
                try:
                    data, peer = sock.recvfrom(2048)
                except BlockingIOError:
                    continue
                if sock.family == socket.AF_INET:
                    data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets include the header
                    reply = 0
                else:
                    reply = 129
                if len(data) < 8:
                    continue
                kind, _, _, got_id, seq = struct.unpack("!BBHHH", data[:8])
                if kind != reply or got_id != ident:
                    continue
                key = (sock, ipaddress.ip_address(peer[0].split("%")[0]).compressed, seq)
                if key in pending:
                    results[pending.pop(key)] = time.monotonic() - started
    finally:
        for sock in sockets.values():
            sock.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m lifekit_ip._tool")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("announce", help="announce addresses: IFACE ADDRESS ...")
    sub.add_argument("--count", type=int, default=1)
    sub.add_argument("--interval", type=float, default=1.0)
    sub.add_argument("--delay", type=float, default=0.0)
    sub.add_argument("pairs", nargs="*")
    sub = commands.add_parser("ping", help="echo targets from sources: SOURCE TARGET ...")
    sub.add_argument("--timeout", type=float, default=1.0)
    sub.add_argument("pairs", nargs="*")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error(f"{args.command} takes pairs of arguments")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=True))
    try:
        if args.command == "announce":
            return announce(pairs, count=args.count, interval=args.interval, delay=args.delay)
        print(json.dumps(ping(pairs, timeout=args.timeout)))
    except OSError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
