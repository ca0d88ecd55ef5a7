"""The lab's networks: bridges in a switch namespace, one veth per node per network.

Nothing is added to the machine's own network namespace. Each network is a bridge named after
it inside the lab's switch namespace (``lklab-<name>-sw``); a node's interface on a network is
named after the network (``public``, ``hb1``, ``san``), and its peer, a port of the bridge, is
``<node>-<network>``. Both ends are created directly in their namespaces. Faults act on the
switch side only, as a technician would at the switch:

* cutting a link sets the port down (the node sees its carrier go);
* a partition is an nftables ``bridge`` table in the switch that drops frames forwarded between
  ports of different groups (ARP and neighbour discovery included);
* impairments (loss, rate limit) are applied per port by :mod:`lifekit.lab._impair`.

Commands are grouped into ``ip -batch`` runs, one per namespace, because each ``ip`` process
costs a few milliseconds and a lab comes up in well under a second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from lifekit.lab._impair import relay_tap_name
from lifekit.lab._spec import LabSpec
from lifekit.lab._sys import run

__all__: list[str] = []

PARTITION_TABLE = "lifekit_partition"


def port(node: str, network: str) -> str:
    """The switch-side name of ``node``'s link on ``network``."""
    return f"{node}-{network}"


def mac(lab: str, node_host: int, network_index: int) -> str:
    """A stable, locally administered MAC for one interface (the same after every restart)."""
    digest = hashlib.sha256(lab.encode()).digest()
    return f"02:6c:{digest[0]:02x}:{digest[1]:02x}:{network_index:02x}:{node_host:02x}"


def run_batch(commands: Sequence[str], *, netns: str | None = None) -> None:
    """Run ``ip`` commands in one process, stopping at the first that fails."""
    if not commands:
        return
    argv = ["ip"]
    if netns is not None:
        argv += ["-n", netns]
    run([*argv, "-batch", "-"], input=("\n".join(commands) + "\n").encode())


def switch_commands(spec: LabSpec) -> list[str]:
    """Create one bridge per network in the switch namespace (run with ``-n <switch>``)."""
    commands = []
    for network in spec.all_networks:
        commands += [
            # No STP (ports forward at once), no multicast snooping (IPv6 neighbour discovery
            # must flood without a querier), no address of its own.
            f"link add {network} type bridge stp_state 0 mcast_snooping 0",
            f"link set {network} addrgenmode none",
            f"link set {network} up",
        ]
    return commands


def link_commands(
    spec: LabSpec,
    *,
    lab: str,
    node: str,
    networks: Iterable[str],
    host: int,
    node_netns: str,
    switch_netns: str,
) -> list[str]:
    """Create a node's veths directly in the switch and node namespaces (run in no netns)."""
    commands = []
    for network in networks:
        index = spec.all_networks.index(network) + 1
        commands.append(
            f"link add {port(node, network)} netns {switch_netns} type veth "
            f"peer name {network} address {mac(lab, host, index)} netns {node_netns}"
        )
    return commands


def node_commands(spec: LabSpec, *, networks: Iterable[str], host: int) -> list[str]:
    """Address and raise a node's interfaces (run with ``-n <node>``)."""
    commands = ["link set lo up"]
    for network in networks:
        commands += [
            f"addr add {spec.address(network, host)}/24 dev {network}",
            # nodad: usable at once; the lab hands out unique addresses itself.
            f"addr add {spec.address(network, host, 6)}/64 dev {network} nodad",
            f"link set {network} up",
        ]
    return commands


def port_commands(
    *, node: str, networks: Iterable[str], cut: Iterable[tuple[str, str]] = ()
) -> list[str]:
    """Plug a node's ports into their bridges (run with ``-n <switch>``); cut ones stay down."""
    down = set(cut)
    commands = []
    for network in networks:
        name = port(node, network)
        commands += [
            f"link set {name} addrgenmode none",
            f"link set {name} master {network}",
        ]
        if (node, network) not in down:
            commands.append(f"link set {name} up")
    return commands


def partition_ruleset(groups: Sequence[Sequence[str]], members: Mapping[str, Sequence[str]]) -> str:
    """An nft script replacing the partition table: drop frames between different groups.

    :param groups: the groups of node names.
    :param members: each node's networks.
    """
    header = (
        f"table bridge {PARTITION_TABLE}\n"
        f"delete table bridge {PARTITION_TABLE}\n"
        f"table bridge {PARTITION_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
    )
    # A port under a delay relay reaches the bridge through the relay's TAP: match both.
    ports = [
        sorted(
            name
            for node in group
            for network in members[node]
            for name in (port(node, network), relay_tap_name(port(node, network)))
        )
        for group in groups
    ]
    rules = []
    for i, source in enumerate(ports):
        for j, target in enumerate(ports):
            if i != j and source and target:
                rules.append(
                    "    iifname { "
                    + ", ".join(f'"{name}"' for name in source)
                    + " } oifname { "
                    + ", ".join(f'"{name}"' for name in target)
                    + " } drop\n"
                )
    return header + "".join(rules) + "  }\n}\n"


def clear_partition_ruleset() -> str:
    """An nft script removing the partition table (whether it exists or not)."""
    return f"table bridge {PARTITION_TABLE}\ndelete table bridge {PARTITION_TABLE}\n"


def nft(netns: str, script: str) -> None:
    """Apply an nft script inside a network namespace."""
    run(["nsenter", f"--net=/run/netns/{netns}", "--", "nft", "-f", "-"], input=script.encode())
