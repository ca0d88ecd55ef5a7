"""What a lab is made of (:class:`LabSpec`) and the addresses and names derived from it.

A spec is a frozen value, validated when built: every problem is reported at once, each naming
the bad value and what would be valid. Addresses are derived, not configured one by one:
network number *i* (1-based, in the order given) gets ``10.88.i.0/24`` and
``fd6c:6b00:88:i::/64``; cluster node number *k* gets host number ``10 + k`` on every network,
the client ``100`` and the storage node ``200``. These ranges exist only inside the lab's own
namespaces.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import attrs

from lifekit.errors import ConfigError, ConfigIssue

__all__ = ["LabSpec"]

_NODE_NAME = re.compile(r"[a-z][a-z0-9]{0,5}")
_NETWORK_NAME = re.compile(r"[a-z][a-z0-9]{0,7}")
_LAB_NAME = re.compile(r"[a-z0-9]{1,12}")
_PRIVATE_DIR = re.compile(r"(/[A-Za-z0-9._-]+)+")

#: Names the lab uses for its own namespaces; cluster nodes may not take them.
RESERVED_NODE_NAMES = frozenset({"client", "sw"})
CLIENT = "client"
STORAGE = "storage"
SAN = "san"

CLIENT_HOST = 100
STORAGE_HOST = 200


def _tuple(value: Iterable[str] | str) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen(kw_only=True)
class LabSpec:
    """The shape of a lab: its nodes, networks, client, shared LUN and iSCSI target.

    :param nodes: cluster node names (``[a-z][a-z0-9]{0,5}``), in priority order.
    :param networks: network names (``[a-z][a-z0-9]{0,7}``); every node has one interface,
        named after the network, on each. ``san`` is added when ``iscsi`` is on.
    :param client: whether to add a client node (``client``) on ``client_networks``.
    :param client_networks: the networks the client is on (default: the first one).
    :param lun_size: bytes of the shared LUN image (``0``: no shared LUN). Every cluster node
        gets its own loop device on it (the plain path).
    :param iscsi: run tgtd in a storage node on the ``san`` network, exporting the LUN, so
        nodes can attach a fenced path (their own iSCSI session) with
        :meth:`~lifekit.lab.LabNode.attach_fenced_disk`.
    :param private_dirs: directories each node gets its own persistent copy of (bind mounts;
        missing mount points are created empty on this machine). ``/run`` is always private
        and fresh at every boot.
    :param ipv4_base: the /16 the networks' /24s are carved from.
    :param ipv6_base: the /48 the networks' /64s are carved from.
    """

    nodes: tuple[str, ...] = attrs.field(default=("n1", "n2", "n3"), converter=_tuple)
    networks: tuple[str, ...] = attrs.field(default=("public", "hb1"), converter=_tuple)
    client: bool = True
    client_networks: tuple[str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_tuple)
    )
    lun_size: int = 64 * 1024 * 1024
    iscsi: bool = False
    private_dirs: tuple[str, ...] = attrs.field(
        default=("/etc/lifekit", "/var/lib/lifekit", "/var/log/lifekit"), converter=_tuple
    )
    ipv4_base: str = "10.88.0.0/16"
    ipv6_base: str = "fd6c:6b00:88::/48"

    def __attrs_post_init__(self) -> None:
        issues = list(self._issues())
        if issues:
            raise ConfigError(issues)

    def _issues(self) -> Iterable[ConfigIssue]:
        if not self.nodes:
            yield ConfigIssue("lab: nodes", "a lab needs at least one node", value=self.nodes)
        for name in self.nodes:
            if not _NODE_NAME.fullmatch(name) or name in RESERVED_NODE_NAMES:
                yield ConfigIssue(
                    "lab: nodes",
                    "invalid node name",
                    value=name,
                    expected="1-6 characters [a-z0-9] starting with a letter, not "
                    "'client' or 'sw' (interface names are limited to 15 characters)",
                )
        if len(set(self.nodes)) != len(self.nodes):
            yield ConfigIssue("lab: nodes", "node names repeat", value=self.nodes)
        if len(self.nodes) > 80:
            yield ConfigIssue(
                "lab: nodes", "too many nodes", value=len(self.nodes), expected="at most 80"
            )
        if not self.networks:
            yield ConfigIssue("lab: networks", "a lab needs at least one network")
        for name in self.networks:
            if not _NETWORK_NAME.fullmatch(name):
                yield ConfigIssue(
                    "lab: networks",
                    "invalid network name",
                    value=name,
                    expected="1-8 characters [a-z0-9] starting with a letter",
                )
        if len(set(self.networks)) != len(self.networks):
            yield ConfigIssue("lab: networks", "network names repeat", value=self.networks)
        if len(self.all_networks) > 200:
            yield ConfigIssue("lab: networks", "too many networks", expected="at most 200")
        for name in self.client_networks or ():
            if name not in self.networks:
                yield ConfigIssue(
                    "lab: client_networks",
                    "not one of the lab's networks",
                    value=name,
                    expected=f"one of {list(self.networks)}",
                )
        if self.lun_size < 0 or (self.lun_size and self.lun_size < 1024 * 1024):
            yield ConfigIssue(
                "lab: lun_size",
                "invalid LUN size",
                value=self.lun_size,
                expected="0 (no LUN) or at least 1 MiB",
            )
        if self.iscsi and not self.lun_size:
            yield ConfigIssue(
                "lab: iscsi", "iSCSI needs a LUN to export", expected="set lun_size too"
            )
        for path in self.private_dirs:
            parts = path.split("/")[1:]
            if (
                not _PRIVATE_DIR.fullmatch(path)
                or any(part in (".", "..") for part in parts)
                or parts[0] in ("run", "proc", "sys", "dev", "tmp")
            ):
                yield ConfigIssue(
                    "lab: private_dirs",
                    "invalid private directory",
                    value=path,
                    expected="an absolute path without '.' or '..', such as /var/lib/nfs, "
                    "not under /run (fresh at every boot anyway), /proc, /sys, /dev or /tmp",
                )
        for field, text, version, prefix in (
            ("ipv4_base", self.ipv4_base, 4, 16),
            ("ipv6_base", self.ipv6_base, 6, 48),
        ):
            try:
                net = ipaddress.ip_network(text)
            except ValueError:
                net = None
            if net is None or net.version != version or net.prefixlen != prefix:
                yield ConfigIssue(
                    f"lab: {field}",
                    "invalid base network",
                    value=text,
                    expected=f"an IPv{version} /{prefix} network, e.g. "
                    + ("10.88.0.0/16" if version == 4 else "fd6c:6b00:88::/48"),
                )

    @property
    def all_networks(self) -> tuple[str, ...]:
        """The networks including ``san`` when the iSCSI target is on."""
        if self.iscsi and SAN not in self.networks:
            return (*self.networks, SAN)
        return self.networks

    @property
    def client_nets(self) -> tuple[str, ...]:
        """The networks the client is on."""
        return self.client_networks or self.networks[:1]

    def members(self) -> list[tuple[str, tuple[str, ...], int]]:
        """Every node of the lab: ``(name, networks, host number)``, cluster nodes first."""
        members = [
            (name, self.all_networks, 10 + index) for index, name in enumerate(self.nodes, 1)
        ]
        if self.client:
            members.append((CLIENT, self.client_nets, CLIENT_HOST))
        if self.iscsi:
            members.append((STORAGE, (SAN,), STORAGE_HOST))
        return members

    def subnet(
        self, network: str, version: int = 4
    ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The subnet of one network, e.g. ``10.88.1.0/24``."""
        index = self.all_networks.index(network) + 1
        if version == 4:
            base4 = ipaddress.IPv4Network(self.ipv4_base)
            return ipaddress.IPv4Network((int(base4.network_address) + (index << 8), 24))
        base6 = ipaddress.IPv6Network(self.ipv6_base)
        return ipaddress.IPv6Network((int(base6.network_address) + (index << 64), 64))

    def address(self, network: str, host: int, version: int = 4) -> str:
        """The address of host number ``host`` on ``network``, without prefix length."""
        return str(self.subnet(network, version)[host])

    def to_json(self) -> dict[str, object]:
        """The spec as JSON-compatible data (kept in the lab's state file)."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in attrs.fields(LabSpec)
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LabSpec:
        """The spec back from :meth:`to_json`'s data."""
        return cls(**data)  # type: ignore[arg-type]


def check_lab_name(name: str) -> str:
    """A lab name as given, or a clear error."""
    if not _LAB_NAME.fullmatch(name):
        raise ConfigError(
            [
                ConfigIssue(
                    "lab: name",
                    "invalid lab name",
                    value=name,
                    expected="1-12 characters [a-z0-9]",
                )
            ]
        )
    return name
