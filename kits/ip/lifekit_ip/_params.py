"""The ip kit's parameters: the schema, the checks of single values, and the cross-field rules.

Everything here is pure and fast (``lifekit check`` runs it on any machine). What can only be
known on the node itself, whether an interface exists or which one holds the subnet, is left to
``restore``, which reports a missing interface as a fatal result naming it.
:func:`parse` turns a resource's parameters into an :class:`IpConfig`, the one typed record the
kit reads, and raises :class:`~lifekit.errors.ParamError` naming the resource, the parameter,
the bad value and the fix.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from lifekit.errors import ParamError
from lifekit.kit import Param, Schema

__all__ = ["DAD_POLICIES", "SCHEMA", "IpConfig", "parse"]

#: Duplicate address detection policies: wait for it (and refuse a duplicate) or skip it.
DAD_POLICIES = ("wait", "skip")

#: Linux keeps interface names and address labels in IFNAMSIZ (16) bytes, NUL included.
_IFNAMSIZ = 15
#: Alternative names (``ip link property add ... altname``) may be longer.
_ALTNAMSIZ = 127
_ADDRESS_FORM = re.compile(r"[^/\s]+/[0-9]{1,3}\Z")
_ADDRESS_HINT = "an address with its prefix length, e.g. '10.88.1.50/24' or 'fd00:1::50/64'"


def _interface_problem(value: Any) -> str | None:
    # The kernel's dev_valid_name(): no '/', ':' or whitespace, not '.' or '..'.
    if (
        isinstance(value, str)
        and 0 < len(value.encode()) <= _ALTNAMSIZ
        and value not in (".", "..")
        and not any(ch in "/:" or ch.isspace() or not ch.isprintable() for ch in value)
    ):
        return None
    return (
        "expected an interface name (or altname) without '/', ':' or spaces, at most "
        f"{_IFNAMSIZ} characters ({_ALTNAMSIZ} for an altname), e.g. 'eth0', 'bond0.100'"
    )


def _address_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not _ADDRESS_FORM.match(value):
        return f"expected {_ADDRESS_HINT}"
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError as exc:
        return f"expected {_ADDRESS_HINT} ({exc})"
    ip, net = iface.ip, iface.network
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        return f"expected a unicast address that is not loopback; {ip} is not"
    if ip.version == 6 and ip.is_link_local:
        return f"expected a global or unique-local IPv6 address; {ip} is link-local"
    if (
        ip.version == 4
        and net.prefixlen <= 30
        and ip in (net.network_address, net.broadcast_address)
    ):
        which = "network" if ip == net.network_address else "broadcast"
        return f"expected a host address; {ip} is the {which} address of {net}"
    return None


def _label_problem(value: Any) -> str | None:
    if (
        isinstance(value, str)
        and ":" in value
        and len(value.encode()) <= _IFNAMSIZ
        and all(part for part in value.split(":", 1))
        and not any(ch == "/" or ch.isspace() or not ch.isprintable() for ch in value)
    ):
        return None
    return (
        f"expected '<interface>:<suffix>' of at most {_IFNAMSIZ} characters in all, without "
        "spaces or '/', e.g. 'eth0:vip' (IPv4 only)"
    )


def _ping_target_problem(value: Any) -> str | None:
    if not isinstance(value, list | tuple):
        return "expected a list of IP addresses, e.g. ['10.88.1.1']"
    for item in value:
        try:
            ip = ipaddress.ip_address(item)
        except ValueError:
            return f"expected IP addresses without prefix, e.g. ['10.88.1.1']; {item!r} is not one"
        if ip.is_multicast or ip.is_unspecified:
            return f"expected unicast addresses; {item!r} is not"
    if len(set(value)) != len(value):
        return "expected each address once"
    return None


def _count_problem(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return None
    return "expected a whole number of announcements from 0 (none) to 100, e.g. 2"


def _seconds_problem(low: float, high: float, *, zero: bool = False) -> Any:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and math.isfinite(value) and (low < value <= high or (zero and value == 0)):
            return None
        zero_text = "0 (off) or " if zero else ""
        return f"expected {zero_text}a number of seconds > {low:g} and <= {high:g}"

    return check


def _interfaces_problem(value: Any) -> str | None:
    if not isinstance(value, list | tuple):
        return "expected a list of interface names, e.g. ['eth1']"
    for item in value:
        problem = _interface_problem(item)
        if problem is not None:
            return f"{problem}; {item!r} is not"
    if len(set(value)) != len(value):
        return "expected each interface once"
    return None


#: The kit's parameter schema (see ``docs/ip-kit.md`` for the full reference).
SCHEMA = Schema(
    [
        Param(
            "address",
            str,
            required=True,
            unique=True,
            check=_address_problem,
            description="the virtual address with its prefix length, IPv4 or IPv6 "
            "(e.g. '10.88.1.50/24'; host bits are the address, the prefix its subnet)",
        ),
        Param(
            "interface",
            str,
            check=_interface_problem,
            description="the interface (name or altname; a VLAN or bond works as any other) "
            "(default: the one whose subnet holds the address, from the node's addresses "
            "and routes)",
        ),
        Param(
            "label",
            str,
            check=_label_problem,
            description="IPv4 only: the address label, '<interface>:<suffix>', at most 15 "
            "characters (default: none)",
        ),
        Param(
            "ping_list",
            list,
            item_type=str,
            default=(),
            check=_ping_target_problem,
            description="addresses pinged from the virtual address at each quickcheck; at "
            "least one must answer (default: no ping)",
        ),
        Param(
            "ping_timeout",
            float,
            default=1.0,
            check=_seconds_problem(0, 10),
            description="seconds a quickcheck waits for the ping list to answer",
        ),
        Param(
            "announce_count",
            int,
            default=2,
            check=_count_problem,
            description="gratuitous ARPs / unsolicited neighbour advertisements sent on "
            "restore and recover (0: none)",
        ),
        Param(
            "announce_interval",
            float,
            default=1.0,
            check=_seconds_problem(0, 60),
            description="seconds between two announcements (the first is sent before restore "
            "returns, the others in the background)",
        ),
        Param(
            "reannounce_interval",
            float,
            default=0.0,
            check=_seconds_problem(0, 86400, zero=True),
            description="while in service, announce again at the first quickcheck at least "
            "this many seconds after the last announcement (0: off); heals caches after a split",
        ),
        Param(
            "dad",
            str,
            default="wait",
            choices=DAD_POLICIES,
            description="duplicate address detection before adding: 'wait' (IPv4: arping -D; "
            "IPv6: the kernel's DAD; a duplicate is refused) or 'skip' (add at once)",
        ),
        Param(
            "backup_interfaces",
            list,
            item_type=str,
            default=(),
            check=_interfaces_problem,
            description="interfaces to move the address to, in order, when the link of the "
            "one holding it is down",
        ),
    ]
)


@attrs.frozen
class IpConfig:
    """One resource's parameters, checked and typed: what the kit reads.

    :param interface: ``None`` when it is to be found on the node.
    """

    tag: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    interface: str | None = None
    label: str | None = None
    ping_list: tuple[str, ...] = ()
    ping_timeout: float = 1.0
    announce_count: int = 2
    announce_interval: float = 1.0
    reannounce_interval: float = 0.0
    dad: str = "wait"
    backup_interfaces: tuple[str, ...] = ()

    @property
    def ip(self) -> str:
        """The address alone, e.g. ``10.88.1.50``."""
        return str(self.address.ip)

    @property
    def cidr(self) -> str:
        """The address with its prefix length, e.g. ``10.88.1.50/24``."""
        return f"{self.address.ip}/{self.address.network.prefixlen}"

    @property
    def prefixlen(self) -> int:
        """The prefix length."""
        return self.address.network.prefixlen

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.address.version


def _given(params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None and SCHEMA.by_name[name].has_default:
        return SCHEMA.by_name[name].default
    return value


def parse(tag: str, params: Mapping[str, Any]) -> IpConfig:
    """Check ``params`` as a whole and return them typed.

    Every value is checked again here, so a direct caller gets the same errors as a config.

    :raises ParamError: the first problem found, naming the parameter, the value and the fix.
    """
    for name, value in params.items():
        param = SCHEMA.by_name.get(name)
        if param is None:
            known = ", ".join(SCHEMA.by_name)
            raise ParamError(tag, name, value, f"not an ip kit parameter; valid: {known}")
        if value is not None and param.check is not None and (problem := param.check(value)):
            raise ParamError(tag, name, value, problem)
    raw = params.get("address")
    if raw is None:
        raise ParamError(tag, "address", None, f"give {_ADDRESS_HINT}")
    address = ipaddress.ip_interface(raw)
    interface = params.get("interface")
    label = params.get("label")
    if label is not None:
        if address.version == 6:
            raise ParamError(
                tag, "label", label, "labels exist for IPv4 addresses only; remove 'label'"
            )
        if interface is not None and label.split(":", 1)[0] != interface:
            raise ParamError(
                tag,
                "label",
                label,
                f"a label starts with its interface and a colon: '{interface}:<suffix>'",
            )
    ping_list = tuple(_given(params, "ping_list"))
    for target in ping_list:
        if ipaddress.ip_address(target).version != address.version:
            raise ParamError(
                tag,
                "ping_list",
                list(ping_list),
                f"addresses of the same family as {raw!r} (IPv{address.version}): they are "
                f"pinged from it; {target!r} is not",
            )
    backups = tuple(_given(params, "backup_interfaces"))
    if interface is not None and interface in backups:
        raise ParamError(
            tag,
            "backup_interfaces",
            list(backups),
            f"interfaces other than the resource's own {interface!r}",
        )
    dad = _given(params, "dad")
    if dad not in DAD_POLICIES:
        raise ParamError(tag, "dad", dad, "one of " + ", ".join(map(repr, DAD_POLICIES)))
    return IpConfig(
        tag=tag,
        address=address,
        interface=interface,
        label=label,
        ping_list=ping_list,
        ping_timeout=float(_given(params, "ping_timeout")),
        announce_count=int(_given(params, "announce_count")),
        announce_interval=float(_given(params, "announce_interval")),
        reannounce_interval=float(_given(params, "reannounce_interval")),
        dad=dad,
        backup_interfaces=backups,
    )
