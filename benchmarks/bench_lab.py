"""Lab benchmarks: up and down of virtual clusters, a node's power cycle, a fenced path.

Run (as root):  .venv/bin/python benchmarks/bench_lab.py               (full size, a table)
                .venv/bin/python benchmarks/bench_lab.py --size smoke  (what CI runs: seconds)

Every repetition builds a fresh lab with :class:`lifekit.lab.Lab` and tears it down, timing
``up()`` and ``down()`` separately, wall clock. Measured:

* the issue's figure: 3 nodes, networks ``public`` and ``hb1`` plus the ``san`` network that
  ``iscsi`` adds, a client, the shared 64 MiB LUN with one loop device per node, tgtd on the
  storage node and the lab's controller (goal: < 1 s up, < 1 s down);
* the same lab without iSCSI (no storage node, no tgtd), to show what tgtd costs;
* in an iSCSI lab: n1's power loss and power on, then n1's ``attach_fenced_disk()``, and that
  lab's ``down()`` with the fenced path attached;
* 8 nodes on three networks plus ``san``, to show how bring-up scales;
* a peer: the same network topology (namespaces, bridges in a switch namespace, one veth per
  node per network, IPv4 and IPv6 addresses) built the way the field notes' shell scripts do
  it, one ``ip`` process per command (``shared/field-notes/nfs-ganesha.md`` section 2), and
  torn down with one ``ip netns del`` per namespace. It makes only the networks: no mount or
  PID namespaces, no LUN, no tgtd, so it is a lower bound for a shell-script lab.

The peer's objects are named ``lkbench<hex>...`` and removed in ``finally`` blocks; every lab
is torn down in a ``finally`` block too, and at the end the benchmark checks that none of its
labs or peer objects is left (exit status 1 if one is). Speed never fails the run: machines
are noisy; benchmarks report, tests assert behaviour.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import statistics
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from lifekit.lab import Lab, LabSpec, leftovers

SIZES = {
    # repetitions of each 3-node measurement, of the 8-node one, and untimed warm-ups
    "full": {"repeats": 20, "big_repeats": 10, "warmups": 1},
    "smoke": {"repeats": 2, "big_repeats": 1, "warmups": 0},
}

THREE = LabSpec(nodes=("n1", "n2", "n3"), networks=("public", "hb1"), iscsi=True)
THREE_PLAIN = LabSpec(nodes=("n1", "n2", "n3"), networks=("public", "hb1"), iscsi=False)
EIGHT = LabSpec(
    nodes=tuple(f"n{index}" for index in range(1, 9)),
    networks=("public", "hb1", "hb2"),
    iscsi=True,
)

PEER_PREFIX = "lkbench"
# One character per member or network keeps a root-namespace veth name within the kernel's
# 15 characters: lkbench + 4 hex + member + network + side = 14.
_INDEX = string.digits + string.ascii_lowercase


@dataclass
class Samples:
    """Wall times of one measurement, in seconds."""

    name: str
    goal: float | None = None
    note: str = ""
    seconds: list[float] = field(default_factory=list)

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Time the block; a block that raises records nothing."""
        start = time.perf_counter()
        yield
        self.seconds.append(time.perf_counter() - start)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p90(self) -> float:
        """The nearest-rank 90th percentile (the maximum for fewer than 10 samples)."""
        ordered = sorted(self.seconds)
        return ordered[math.ceil(0.9 * len(ordered)) - 1]

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return "-"
        return "ok" if self.p90 < self.goal else "MISSED"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "goal_s": self.goal, "note": self.note, "s": self.seconds}


# --- the lab -------------------------------------------------------------------------------


def _lab(spec: LabSpec) -> Lab:
    # Lab names are [a-z0-9]{1,12}; "lkb" marks the benchmark's labs among other agents' ones.
    return Lab(spec, name="lkb" + secrets.token_hex(4))


def bench_up_down(
    spec: LabSpec, up: Samples, down: Samples, *, repeats: int, warmups: int, ids: list[str]
) -> None:
    """Time ``up()`` and ``down()`` of a fresh lab, ``repeats`` times."""
    for index in range(warmups + repeats):
        samples = (up, down) if index >= warmups else (Samples("warm-up"), Samples("warm-up"))
        lab = _lab(spec)
        ids.append(lab.id)
        try:
            with samples[0].timing():
                lab.up()
        finally:
            # down() is safe on a half-made lab: a failed up() is still cleaned up, untimed.
            with samples[1].timing():
                lab.down()


def bench_faults(
    spec: LabSpec,
    power_loss: Samples,
    power_on: Samples,
    attach: Samples,
    down: Samples,
    *,
    repeats: int,
    ids: list[str],
) -> None:
    """In a fresh iSCSI lab each time: n1's power loss, power on, then its fenced path."""
    for _ in range(repeats):
        lab = _lab(spec)
        ids.append(lab.id)
        try:
            lab.up()
            n1 = lab.node("n1")
            with power_loss.timing():
                n1.power_loss()
            if n1.is_on:
                raise RuntimeError(f"n1 of lab {lab.name} is still on after its power loss")
            with power_on.timing():
                n1.power_on()
            with attach.timing():
                device = n1.attach_fenced_disk()
            if not device.startswith("/dev/loop"):
                raise RuntimeError(f"attach_fenced_disk() gave {device!r}, not a loop device")
        finally:
            with down.timing():
                lab.down()


# --- the peer: one `ip` process per command, as the field notes' scripts do ------------------


class ShellTopology:
    """The lab's network topology for ``spec`` as a shell script, one ``ip`` per command.

    A switch namespace holds one bridge per network; each member (nodes, client, storage) gets
    a namespace and, per network, a veth made in the root namespace and moved into place, as
    in the field notes' ``setup-net.sh``, with the lab's IPv4 and IPv6 addresses. The script
    runs under ``sh -e``, so its cost is what a shell-script lab pays: a fork and exec each.
    """

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.tag = f"{PEER_PREFIX}{secrets.token_hex(2)}"
        self.switch = f"{self.tag}-sw"
        self.members = spec.members()
        self.namespaces = [self.switch] + [f"{self.tag}-{name}" for name, _n, _h in self.members]

    def veth(self, member: int, network: str, side: str) -> str:
        """The root-namespace name of one end (``h``: the bridge's, ``0``: the node's)."""
        net = _INDEX[self.spec.all_networks.index(network)]
        return f"{self.tag}{_INDEX[member]}{net}{side}"

    def up_commands(self) -> list[str]:
        sw = self.switch
        commands = [f"ip netns add {sw}"]
        for network in self.spec.all_networks:
            commands += [
                f"ip -n {sw} link add {network} type bridge",
                f"ip -n {sw} link set {network} up",
            ]
        for member, (name, networks, host) in enumerate(self.members):
            netns = f"{self.tag}-{name}"
            commands += [f"ip netns add {netns}", f"ip -n {netns} link set lo up"]
            for network in networks:
                outer, inner = self.veth(member, network, "h"), self.veth(member, network, "0")
                v4, v6 = self.spec.address(network, host), self.spec.address(network, host, 6)
                commands += [
                    f"ip link add {outer} type veth peer name {inner}",
                    f"ip link set {outer} netns {sw}",
                    f"ip -n {sw} link set {outer} master {network} up",
                    f"ip link set {inner} netns {netns}",
                    f"ip -n {netns} addr add {v4}/24 dev {inner}",
                    f"ip -n {netns} addr add {v6}/64 dev {inner} nodad",
                    f"ip -n {netns} link set {inner} up",
                ]
        return commands

    def down_commands(self) -> list[str]:
        """One ``ip netns del`` per namespace (the veths go with them)."""
        return [f"ip netns del {netns}" for netns in self.namespaces]

    @staticmethod
    def run(commands: list[str]) -> None:
        """Run commands as one ``sh -e`` script."""
        subprocess.run(
            ["sh", "-e"],
            input="\n".join(commands).encode() + b"\n",
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def remove_leftovers(self) -> None:
        """After a failure part-way: remove whatever of this topology exists, untimed."""
        existing = set(_netns_names())
        for netns in self.namespaces:
            if netns in existing:
                subprocess.run(["ip", "netns", "del", netns], check=False)
        for link in _root_links():
            if link.startswith(self.tag):
                # Deleting one end of a veth takes its peer too: the peer's own delete fails.
                subprocess.run(["ip", "link", "del", link], check=False, stderr=subprocess.DEVNULL)


def _netns_names() -> list[str]:
    listed = subprocess.run(["ip", "-j", "netns", "list"], check=True, capture_output=True)
    return [entry["name"] for entry in json.loads(listed.stdout or b"[]")]


def _root_links() -> list[str]:
    listed = subprocess.run(["ip", "-j", "link", "show"], check=True, capture_output=True)
    return [entry["ifname"] for entry in json.loads(listed.stdout or b"[]")]


def bench_peer(spec: LabSpec, up: Samples, down: Samples, *, repeats: int, tags: list[str]) -> int:
    """Time the shell-script way of building ``spec``'s networks; returns its command count."""
    commands = 0
    for _ in range(repeats):
        topology = ShellTopology(spec)
        tags.append(topology.tag)
        script = topology.up_commands()
        done = False
        try:
            with up.timing():
                topology.run(script)
            with down.timing():
                topology.run(topology.down_commands())
            done = True
        finally:
            if not done:
                topology.remove_leftovers()
        commands = len(script)
    return commands


def peer_leftovers(tags: list[str]) -> list[str]:
    """The peer's namespaces and root-namespace links that still exist."""
    found = [name for name in _netns_names() if name.startswith(tuple(tags))]
    found += [name for name in _root_links() if name.startswith(tuple(tags))]
    return found


# --- the table -----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def print_table(rows: list[Samples], *, size: str, repeats: int, big_repeats: int) -> None:
    header = ("measurement", "median", "p90", "max", "goal", "verdict")
    cells = [
        (
            row.name,
            _ms(row.median),
            _ms(row.p90),
            _ms(max(row.seconds)),
            "-" if row.goal is None else f"< {row.goal:g} s",
            row.verdict,
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *cells]) for column in range(6)]
    print(
        f"lifekit lab benchmarks (size {size}; {repeats} repetitions, "
        f"{big_repeats} for 8 nodes; wall time)"
    )
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for line in [header, *cells]:
        print(
            "  ".join(
                text.ljust(width) if column == 0 else text.rjust(width)
                for column, (text, width) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
    for row in rows:
        if row.note:
            print(f"{row.name.split(':')[0]}: {row.note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--json", action="store_true", help="print the samples as JSON too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_lab.py needs root (the lab makes namespaces and loop devices)")
        return 2
    size = SIZES[args.size]
    repeats, big_repeats, warmups = size["repeats"], size["big_repeats"], size["warmups"]

    up3 = Samples("up: 3 nodes, 2 networks + san, client, LUN, tgtd", goal=1.0)
    down3 = Samples("down: the 3-node iSCSI lab", goal=1.0)
    up3_plain = Samples("up: the same without iSCSI (no san, no tgtd)")
    down3_plain = Samples("down: the 3-node lab without iSCSI")
    power_loss = Samples("power loss of n1 (iSCSI lab)")
    power_on = Samples("power on of n1")
    attach = Samples("attach_fenced_disk() of n1 (iSCSI session, nbdfuse, loop)")
    down_fenced = Samples("down: iSCSI lab with n1's fenced path attached")
    up8 = Samples("up: 8 nodes, 3 networks + san, client, LUN, tgtd")
    down8 = Samples("down: the 8-node lab")
    peer_up3 = Samples("peer up (3 nodes): the networks, one `ip` per command")
    peer_down3 = Samples("peer down (3 nodes): one `ip netns del` per namespace")
    peer_up8 = Samples("peer up (8 nodes): the networks, one `ip` per command")
    peer_down8 = Samples("peer down (8 nodes): one `ip netns del` per namespace")

    ids: list[str] = []
    tags: list[str] = []
    try:
        bench_up_down(THREE, up3, down3, repeats=repeats, warmups=warmups, ids=ids)
        bench_up_down(
            THREE_PLAIN, up3_plain, down3_plain, repeats=repeats, warmups=warmups, ids=ids
        )
        bench_faults(THREE, power_loss, power_on, attach, down_fenced, repeats=repeats, ids=ids)
        bench_up_down(EIGHT, up8, down8, repeats=big_repeats, warmups=warmups, ids=ids)
        commands3 = bench_peer(THREE, peer_up3, peer_down3, repeats=repeats, tags=tags)
        commands8 = bench_peer(EIGHT, peer_up8, peer_down8, repeats=big_repeats, tags=tags)
    finally:
        left = leftovers(ids)
        left_peer = peer_leftovers(tags) if tags else []
    # The peer builds less than the lab (networks only), so the ratio flatters the peer.
    peer_up3.note = (
        f"{commands3} `ip` processes, networks only; the lab's whole up "
        f"is {peer_up3.median / up3.median:.1f}x faster"
    )
    peer_up8.note = (
        f"{commands8} `ip` processes, networks only; the lab's whole up "
        f"is {peer_up8.median / up8.median:.1f}x faster"
    )
    peer_down3.note = "like the lab's down, returns before the kernel has freed the namespaces"
    rows = [
        up3,
        down3,
        up3_plain,
        down3_plain,
        power_loss,
        power_on,
        attach,
        down_fenced,
        up8,
        down8,
        peer_up3,
        peer_down3,
        peer_up8,
        peer_down8,
    ]
    print_table(rows, size=args.size, repeats=repeats, big_repeats=big_repeats)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
    if left or left_peer:
        print(f"LEFTOVERS: labs {left}, peer objects {left_peer}", file=sys.stderr)
        return 1
    print(f"no leftovers: {len(ids)} labs and {len(tags)} peer topologies removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
