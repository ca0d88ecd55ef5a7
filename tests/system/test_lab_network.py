"""The lab's nodes and networks: connectivity, isolation, cut links, partitions, heal."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from lifekit.lab import Lab, LabNode

pytestmark = pytest.mark.root


def reachable(source: LabNode, targets: Iterable[str]) -> dict[str, bool]:
    """Ping every target once, in parallel, from ``source`` and report which answered."""
    targets = list(targets)
    script = (
        'for t in "$@"; do (if ping -n -q -c1 -W0.5 "$t" >/dev/null 2>&1; '
        'then echo "$t ok"; else echo "$t no"; fi) & done; wait'
    )
    out = source.run(["sh", "-c", script, "sh", *targets]).stdout.split("\n")
    answers = dict(line.split() for line in out if line)
    return {target: answers[target] == "ok" for target in targets}


def eventually_reachable(source: LabNode, targets: Iterable[str], *, timeout: float = 5.0) -> bool:
    """Whether every target answers within ``timeout`` (a healed path needs the neighbour
    tables to retry: a failed IPv6 neighbour entry is probed again after about a second)."""
    pending = list(targets)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [t for t, ok in reachable(source, pending).items() if not ok]
    return not pending


def addresses(node: LabNode, networks: Iterable[str]) -> dict[str, str]:
    return {
        node.address(net, version): f"{node.name}/{net}/v{version}"
        for net in networks
        for version in (4, 6)
    }


def matrix(lab: Lab, members: list[LabNode]) -> dict[tuple[str, str], bool]:
    """Which (source, "target/network/vN") pairs can talk."""
    result = {}
    for source in members:
        names: dict[str, str] = {}
        for target in members:
            if target is not source:
                names.update(addresses(target, target.networks))
        for address, ok in reachable(source, names).items():
            result[source.name, names[address]] = ok
    return result


def expected_matrix(members: list[LabNode]) -> dict[tuple[str, str], bool]:
    expected = {}
    for source, target in itertools.permutations(members, 2):
        for net in target.networks:
            for version in (4, 6):
                expected[source.name, f"{target.name}/{net}/v{version}"] = net in source.networks
    return expected


def root_links() -> set[str]:
    return {path.name for path in Path("/sys/class/net").iterdir()}


def test_connectivity_matrix_isolation_and_a_vip(
    lifekit_lab_factory: Callable[..., Lab],
) -> None:
    before = root_links()
    lab = lifekit_lab_factory(nodes=("n1", "n2", "n3"), networks=("public", "hb1"))
    n1, n2, n3, client = lab.node("n1"), lab.node("n2"), lab.node("n3"), lab.client
    # Nothing was added to the machine's own network namespace.
    assert root_links() == before

    members = [n1, n2, n3, client]
    # Every node reaches every other on each shared network, IPv4 and IPv6; the client is
    # only on public, so the nodes' hb1 addresses are out of its reach and it out of theirs.
    assert matrix(lab, members) == expected_matrix(members)

    # Each node sees only its own interfaces, hostname and processes.
    assert n1.run(["hostname"]).stdout.strip() == "n1"
    links = n1.run(["ls", "/sys/class/net"]).stdout.split()
    assert sorted(links) == ["hb1", "lo", "public"]
    assert n1.run(["ps", "-e", "-o", "pid="]).stdout.split()[0] == "1"

    # A mount made on n1 is invisible on n2 and in this machine's own mount namespace.
    n1.run(["mount", "-t", "tmpfs", "lab-n1-only", "/mnt"])
    assert "lab-n1-only" in n1.run(["findmnt", "-n", "-o", "SOURCE", "/mnt"]).stdout
    assert "lab-n1-only" not in n2.run(["cat", "/proc/self/mountinfo"]).stdout
    assert "lab-n1-only" not in Path("/proc/self/mountinfo").read_text()

    # An address added on n1 answers the client.
    vip = lab.spec.address("public", 50)
    assert reachable(client, [vip]) == {vip: False}
    n1.run(["ip", "addr", "add", f"{vip}/24", "dev", "public"])
    # The client's failed ARP lookup is retried about once a second (no GARP was sent).
    assert eventually_reachable(client, [vip])


def test_cut_partition_and_heal(lifekit_lab: Lab) -> None:
    lab = lifekit_lab
    n1, n2, n3 = lab.nodes
    hb1_n2, public_n2 = n2.address("hb1"), n2.address("public")

    # Cutting hb1 for n1 stops only that path.
    lab.cut("n1", "hb1")
    assert reachable(n1, [hb1_n2, public_n2]) == {hb1_n2: False, public_n2: True}
    assert reachable(n3, [hb1_n2]) == {hb1_n2: True}
    assert "NO-CARRIER" in n1.run(["ip", "link", "show", "hb1"]).stdout
    lab.heal()
    assert eventually_reachable(n1, [hb1_n2])

    # {n1} | {n2, n3}: nothing crosses between the groups, on any network, either family;
    # within a group, and to the client (in no group), everything still flows.
    lab.partition(["n1"], ["n2", "n3"])
    across = {**addresses(n2, n2.networks), **addresses(n3, n3.networks)}
    assert not any(reachable(n1, across).values())
    assert not any(reachable(n2, addresses(n1, n1.networks)).values())
    assert all(reachable(n2, addresses(n3, n3.networks)).values())
    assert all(reachable(lab.client, [n1.address("public"), n2.address("public")]).values())
    assert lab.status()["partition"] == [["n1"], ["n2", "n3"]]

    lab.heal()
    assert eventually_reachable(n1, across)
    assert lab.status()["partition"] is None


def test_bad_fault_arguments_name_the_value(lifekit_lab: Lab) -> None:
    lab = lifekit_lab
    with pytest.raises(Exception, match="no node 'n9'"):
        lab.cut("n9", "hb1")
    with pytest.raises(Exception, match="no link on network 'hb1'"):
        lab.cut("client", "hb1")
    with pytest.raises(Exception, match="in two groups"):
        lab.partition(["n1", "n2"], ["n2", "n3"])
    # Nothing changed.
    assert lab.status()["cut"] == []
    assert lab.status()["partition"] is None


def rtt_ms(source: LabNode, target: str) -> float:
    out = source.run(["ping", "-n", "-q", "-c3", "-i0.05", "-W2", target]).stdout
    # rtt min/avg/max/mdev = 0.045/0.051/0.060/0.006 ms
    return float(out.rsplit("=", 1)[1].split("/")[1])


def test_impairments_loss_delay_survive_a_reboot_and_heal(lifekit_lab: Lab) -> None:
    lab = lifekit_lab
    n1, n2 = lab.node("n1"), lab.node("n2")
    target = n1.address("public")
    assert rtt_ms(n2, target) < 20

    lab.impair("n1", "public", delay=0.05)
    assert 90 < rtt_ms(n2, target) < 400  # 50 ms each way
    assert reachable(n2, [n1.address("hb1")]) == {n1.address("hb1"): True}

    lab.impair("n1", "public", loss=1.0)  # replaces the delay
    assert reachable(n2, [target]) == {target: False}
    assert lab.status()["impairments"] == {
        "n1-public": {"loss": 1.0, "rate_kbit": None, "delay": 0.0, "relay": None}
    }
    # The impairment belongs to the cable: it is still there after n1 reboots.
    n1.restart()
    assert reachable(n2, [target]) == {target: False}

    lab.heal()
    assert eventually_reachable(n2, [target])
    assert lab.status()["impairments"] == {}
    with pytest.raises(ValueError, match="loss"):
        lab.impair("n1", "public", loss=2.0)
