"""What the node's ``ip -j addr show`` and ``ip -j route show`` say, parsed into typed records.

Pure: the kit runs the commands on the node (one ``ip -j addr show`` per check cycle for every
address of the node) and hands their output here. One listing carries each interface's name,
altnames, flags and operational state, and every address with its DAD flags, so one read
answers every question a quickcheck asks.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

__all__ = ["Addr", "Link", "Snapshot", "longest", "parse_addr_show", "route_interfaces"]

#: Operational states that mean the link cannot carry traffic.
_DOWN_STATES = frozenset({"DOWN", "LOWERLAYERDOWN", "NOTPRESENT"})


@attrs.frozen
class Addr:
    """One address on one interface."""

    ip: str
    prefixlen: int
    tentative: bool = False
    dadfailed: bool = False
    label: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The subnet the address is in."""
        return ipaddress.ip_interface(f"{self.ip}/{self.prefixlen}").network


@attrs.frozen
class Link:
    """One interface and its addresses."""

    name: str
    altnames: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    operstate: str = "UNKNOWN"
    addrs: tuple[Addr, ...] = ()

    def down_reason(self) -> str | None:
        """Why the link cannot carry traffic (``None`` when it can)."""
        if "UP" not in self.flags:
            return f"interface {self.name} is administratively down (ip link set {self.name} up)"
        if "NO-CARRIER" in self.flags or "LOWER_UP" not in self.flags:
            return f"no carrier on {self.name} (state {self.operstate}): link down"
        if self.operstate in _DOWN_STATES:
            return f"interface {self.name} is {self.operstate}"
        return None

    def find(self, ip: str) -> Addr | None:
        """This interface's entry for ``ip`` (any prefix), if it has one."""
        for addr in self.addrs:
            if addr.ip == ip:
                return addr
        return None


@attrs.frozen
class Snapshot:
    """Every interface of the node, as one ``ip -j addr show`` saw them."""

    links: tuple[Link, ...] = ()

    def link(self, name: str) -> Link | None:
        """The interface called ``name`` (its name or one of its altnames)."""
        for link in self.links:
            if name == link.name or name in link.altnames:
                return link
        return None

    def holders(self, ip: str) -> list[tuple[Link, Addr]]:
        """Every interface that has ``ip`` (with any prefix)."""
        found = []
        for link in self.links:
            addr = link.find(ip)
            if addr is not None:
                found.append((link, addr))
        return found

    def names(self) -> list[str]:
        """Interface names, for error messages."""
        return [link.name for link in self.links]

    def subnet_holders(
        self, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> list[tuple[int, Link]]:
        """Interfaces with an address (other than ``address`` itself) whose subnet holds it.

        Each with the longest matching prefix length on it; loopback and link-local
        addresses do not count.
        """
        best: dict[str, tuple[int, Link]] = {}
        for link in self.links:
            if "LOOPBACK" in link.flags:
                continue
            for addr in link.addrs:
                ip = ipaddress.ip_address(addr.ip)
                if ip == address.ip or ip.version != address.version or ip.is_link_local:
                    continue
                if address.ip in addr.network:
                    previous = best.get(link.name)
                    if previous is None or addr.prefixlen > previous[0]:
                        best[link.name] = (addr.prefixlen, link)
        return list(best.values())


def _addr(info: Mapping[str, Any]) -> Addr | None:
    if info.get("family") not in ("inet", "inet6") or "local" not in info:
        return None
    return Addr(
        ip=ipaddress.ip_address(info["local"]).compressed,
        prefixlen=int(info.get("prefixlen", 128)),
        tentative=bool(info.get("tentative", False)),
        dadfailed=bool(info.get("dadfailed", False)),
        label=info.get("label"),
    )


def parse_addr_show(text: str) -> Snapshot:
    """Parse ``ip -j addr show``.

    :raises ValueError: the text is not the JSON ``ip`` prints.
    """
    data = json.loads(text or "[]")
    if not isinstance(data, list):
        raise ValueError(  # noqa: TRY004 - bad output of a command, not a bad argument
            f"ip -j addr show printed {type(data).__name__}, not a list"
        )
    links = []
    for entry in data:
        if not isinstance(entry, dict) or "ifname" not in entry:
            continue
        addrs = [_addr(info) for info in entry.get("addr_info", ()) if isinstance(info, dict)]
        links.append(
            Link(
                name=str(entry["ifname"]),
                altnames=tuple(entry.get("altnames", ())),
                flags=tuple(entry.get("flags", ())),
                operstate=str(entry.get("operstate", "UNKNOWN")),
                addrs=tuple(addr for addr in addrs if addr is not None),
            )
        )
    return Snapshot(links=tuple(links))


def route_interfaces(
    text: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> list[tuple[int, str]]:
    """Directly connected routes (no gateway) whose destination holds ``address``.

    Parses ``ip -j route show`` (or ``ip -j -6 route show``); returns (prefix length,
    interface) pairs. Finds the interface of a subnet even when the interface has no address
    in it (a VLAN on a bond carrying only routes).
    """
    data = json.loads(text or "[]")
    found: list[tuple[int, str]] = []
    routes: Iterable[Any] = data if isinstance(data, list) else ()
    for route in routes:
        if not isinstance(route, dict) or "dev" not in route or "gateway" in route:
            continue
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("type", "unicast") != "unicast":
            continue
        try:
            network = ipaddress.ip_network(dst if "/" in dst else f"{dst}", strict=False)
        except ValueError:
            continue
        if network.version == address.version and address.ip in network:
            found.append((network.prefixlen, str(route["dev"])))
    return found


def longest(candidates: Sequence[tuple[int, str]]) -> list[str]:
    """The names with the longest prefix among ``candidates`` (several: ambiguous)."""
    if not candidates:
        return []
    top = max(length for length, _ in candidates)
    return sorted({name for length, name in candidates if length == top})
