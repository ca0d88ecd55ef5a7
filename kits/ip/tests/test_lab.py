"""The ip kit on real lab nodes: addresses, announcements, duplicates, DAD, links, batching.

Every test runs the kit's actions inside lab nodes (network namespaces on bridges) and judges
them by what the client and the nodes' kernels see. The client's neighbour table is only ever
read, never changed: when the client follows the address, it is because of the announcement.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from lifekit.kit import Outcome
from lifekit.lab import Lab, LabSpec

pytestmark = pytest.mark.anyio

#: ``on("n1")``: the kit on that node (see conftest.py).
On = Callable[[str], Any]
VIP4 = "10.88.1.50/24"
VIP6 = "fd6c:6b00:88:1::50/64"


def _mac(lab: Lab, node: str, iface: str = "public") -> str:
    return lab.node(node).run(["cat", f"/sys/class/net/{iface}/address"]).stdout.strip()


def _client_ping(lab: Lab, ip: str) -> bool:
    return lab.client.run(["ping", "-c", "1", "-W", "1", ip], check=False).returncode == 0


def _client_neighbour(lab: Lab, ip: str) -> str | None:
    entries = json.loads(lab.client.run(["ip", "-j", "neigh", "show", ip]).stdout or "[]")
    return entries[0].get("lladdr") if entries else None


async def test_the_client_follows_the_address_because_of_the_announcement(lab: Lab, on: On) -> None:
    n1, n2 = on("n1"), on("n2")
    vip = VIP4.split("/", maxsplit=1)[0]
    r1, r2 = (
        n1.resource("vip", address=VIP4, dad="skip"),
        n2.resource("vip", address=VIP4, dad="skip"),
    )
    assert (await n1.restore(r1)).outcome is Outcome.OK
    assert (await n1.quickcheck(r1)).outcome is Outcome.OK
    assert _client_ping(lab, vip)
    assert _client_neighbour(lab, vip) == _mac(lab, "n1")
    assert (await n1.remove(r1)).outcome is Outcome.OK
    assert (await n1.quickcheck(r1)).outcome is Outcome.NOT_RUNNING
    result = await n2.restore(r2)
    assert result.outcome is Outcome.OK, result
    moved = time.monotonic()
    # Right after the move, the client's cache already names n2: the gratuitous ARP did it.
    assert _client_neighbour(lab, vip) == _mac(lab, "n2")
    assert _client_ping(lab, vip)
    assert time.monotonic() - moved < 1.0
    assert (await n2.quickcheck(r2)).outcome is Outcome.OK


def test_without_the_announcement_the_client_stays_on_the_old_node(
    lifekit_lab_factory: Callable[..., Lab], make_kit: Callable[[Lab, str], Any]
) -> None:
    """The control case: the same move with announce_count = 0 strands the client > 10 s.

    Synchronous on purpose (one backend): it waits 10.5 s by design, once.
    """
    lab = lifekit_lab_factory(LabSpec(nodes=("n1", "n2"), networks=("public",), lun_size=0))
    n1, n2 = make_kit(lab, "n1"), make_kit(lab, "n2")
    vip = VIP4.split("/", maxsplit=1)[0]
    # As the announced move above, but with no announcement at all.
    quiet = {"address": VIP4, "announce_count": 0, "dad": "skip"}
    r1, r2 = n1.resource("vip", **quiet), n2.resource("vip", **quiet)

    async def main() -> None:
        assert (await n1.restore(r1)).outcome is Outcome.OK
        assert _client_ping(lab, vip)
        assert (await n1.remove(r1)).outcome is Outcome.OK
        assert (await n2.restore(r2)).outcome is Outcome.OK
        # One ping process that tries every 0.5 s and exits at its first reply, stopped by
        # `timeout` at 10.5 s (status 124): no reply in all that time.
        started = time.monotonic()
        stuck = lab.client.run(
            ["timeout", "10.5", "ping", "-q", "-c", "1", "-i", "0.5", "-w", "20", vip],
            check=False,
        )
        assert stuck.returncode == 124, (stuck.returncode, stuck.stdout, stuck.stderr)
        assert time.monotonic() - started >= 10.5
        assert _client_neighbour(lab, vip) == _mac(lab, "n1")

    anyio.run(main)


async def test_a_duplicate_address_is_refused(lab: Lab, on: On) -> None:
    n1, n2 = on("n1"), on("n2")
    # The client holds the address: n1 refuses, names the client's MAC, adds nothing.
    lab.client.run(["ip", "addr", "add", "10.88.1.60/24", "dev", "public"])
    taken = n1.resource("taken", address="10.88.1.60/24")
    result = await n1.restore(taken)
    assert result.outcome is Outcome.HARD_FAILURE, result
    assert _mac(lab, "client") in result.reason
    assert "arping -D" in result.reason
    assert not n1.has("10.88.1.60/24")
    # Another cluster node holds it: the same.
    r1, r2 = n1.resource("vip", address=VIP4), n2.resource("vip", address=VIP4)
    assert (await n1.restore(r1)).outcome is Outcome.OK
    result = await n2.restore(r2)
    assert result.outcome is Outcome.HARD_FAILURE, result
    assert _mac(lab, "n1") in result.reason
    assert not n2.has(VIP4)
    assert n1.has(VIP4)


async def test_the_ipv6_path_works_dad_included(lab: Lab, on: On) -> None:
    n1, n2 = on("n1"), on("n2")
    vip = VIP6.split("/", maxsplit=1)[0]
    r1 = n1.resource("vip6", address=VIP6, dad="wait")
    started = time.monotonic()
    result = await n1.restore(r1)
    waited = time.monotonic() - started
    assert result.outcome is Outcome.OK, result
    assert waited > 0.5  # the kernel's DAD: about a second (docs/ip-kit.md)
    [addr] = [a for a in n1.addrs("public") if a["local"] == vip]
    assert not addr.get("tentative")
    assert not addr.get("dadfailed")
    assert (await n1.quickcheck(r1)).outcome is Outcome.OK
    assert _client_ping(lab, vip)
    assert _client_neighbour(lab, vip) == _mac(lab, "n1")
    assert (await n1.remove(r1)).outcome is Outcome.OK
    r2 = n2.resource("vip6", address=VIP6, dad="skip")
    started = time.monotonic()
    assert (await n2.restore(r2)).outcome is Outcome.OK
    assert time.monotonic() - started < 0.5 + waited / 2  # nodad: no wait
    # The unsolicited neighbour advertisement moved the client's entry at once.
    assert _client_neighbour(lab, vip) == _mac(lab, "n2")
    assert _client_ping(lab, vip)
    assert (await n2.quickcheck(r2)).outcome is Outcome.OK


async def test_a_duplicate_ipv6_address_is_refused_by_dad(lab: Lab, on: On) -> None:
    n1 = on("n1")
    lab.client.run(["ip", "-6", "addr", "add", "fd6c:6b00:88:1::60/64", "dev", "public", "nodad"])
    taken = n1.resource("taken6", address="fd6c:6b00:88:1::60/64")
    result = await n1.restore(taken)
    assert result.outcome is Outcome.HARD_FAILURE, result
    assert "duplicate address detection failed" in result.reason
    assert not n1.has("fd6c:6b00:88:1::60/64")
    assert (await n1.quickcheck(taken)).outcome is Outcome.NOT_RUNNING


async def test_a_cut_link_is_reported_and_recovered_onto_the_backup(lab: Lab, on: On) -> None:
    n1 = on("n1")
    vip = n1.resource("vip", address=VIP4, interface="public", backup_interfaces=["hb1"])
    lonely = n1.resource("lonely", address="10.88.1.51/24", interface="public", dad="skip")
    assert (await n1.restore(vip)).outcome is Outcome.OK
    assert (await n1.restore(lonely)).outcome is Outcome.OK
    lab.cut("n1", "public")
    await anyio.sleep(0.05)
    results = await n1.many([vip, lonely])
    for result in results.values():
        assert result.outcome is Outcome.SOFT_FAILURE, result
        assert "carrier" in result.reason
        assert "public" in result.reason
    result = await n1.recover(vip)
    assert result.outcome is Outcome.OK, result
    assert "hb1" in result.reason
    assert n1.has(VIP4, "hb1")
    assert not n1.has(VIP4, "public")
    quick = await n1.quickcheck(vip)
    assert quick.outcome is Outcome.OK
    assert "backup interface hb1" in quick.reason
    # Without a backup, recover cannot help here: fail over.
    result = await n1.recover(lonely)
    assert result.outcome is Outcome.HARD_FAILURE, result
    assert "public" in result.reason
    assert "backup" in result.reason
    assert n1.has("10.88.1.51/24", "public")  # left as it was: the hierarchy fails over
    assert (await n1.remove(vip)).outcome is Outcome.OK
    assert not n1.has(VIP4)


async def test_an_interface_that_does_not_exist_is_fatal_and_named(lab: Lab, on: On) -> None:
    n1 = on("n1")
    ghost = n1.resource("ghost", address=VIP4, interface="eth9")
    result = await n1.restore(ghost)
    assert result.outcome is Outcome.FATAL, result
    assert "'eth9'" in result.reason
    assert "n1" in result.reason
    result = await n1.quickcheck(ghost)
    assert result.outcome is Outcome.NOT_RUNNING
    assert "eth9" in result.reason
    assert (await n1.remove(ghost)).outcome is Outcome.OK


async def test_remove_never_touches_an_address_it_does_not_own(lab: Lab, on: On) -> None:
    n1 = on("n1")
    node = lab.node("n1")
    node.run(["ip", "addr", "add", "10.88.1.50/25", "dev", "public"])
    vip = n1.resource("vip", address=VIP4)
    assert (await n1.quickcheck(vip)).outcome is Outcome.NOT_RUNNING
    result = await n1.restore(vip)
    assert result.outcome is Outcome.HARD_FAILURE, result
    assert "/25" in result.reason
    assert (await n1.remove(vip)).outcome is Outcome.OK
    assert n1.has("10.88.1.50/25")
    assert n1.has("10.88.1.11/24")  # the node's own address, in the same subnet


async def test_interface_found_by_subnet_altname_and_label(lab: Lab, on: On) -> None:
    n1 = on("n1")
    lab.node("n1").run(["ip", "link", "property", "add", "dev", "hb1", "altname", "heartbeat-one"])
    found = n1.resource("found", address="10.88.2.50/24")  # no interface: hb1 holds the subnet
    named = n1.resource("named", address="10.88.2.51/24", interface="heartbeat-one", dad="skip")
    labelled = n1.resource(
        "labelled", address="10.88.2.52/24", interface="hb1", label="hb1:vip", dad="skip"
    )
    for resource in (found, named, labelled):
        assert (await n1.restore(resource)).outcome is Outcome.OK
    assert n1.has("10.88.2.50/24", "hb1")
    assert n1.has("10.88.2.51/24", "hb1")
    [addr] = [a for a in n1.addrs("hb1") if a["local"] == "10.88.2.52"]
    assert addr["label"] == "hb1:vip"
    results = await n1.many([found, named, labelled])
    assert all(r.outcome is Outcome.OK for r in results.values()), results
    assert (await n1.remove(named)).outcome is Outcome.OK
    assert not n1.has("10.88.2.51/24")
    assert n1.has("10.88.2.50/24")


async def test_interface_found_by_route_when_it_has_no_address_in_the_subnet(
    lab: Lab, on: On
) -> None:
    # Like a VLAN on a bond that carries only a route: hb1 loses its address, keeps a route.
    n1 = on("n1")
    node = lab.node("n1")
    node.run(["ip", "addr", "del", "10.88.2.11/24", "dev", "hb1"])
    node.run(["ip", "route", "add", "10.88.2.0/24", "dev", "hb1"])
    routed = n1.resource("routed", address="10.88.2.50/24", dad="skip")
    result = await n1.restore(routed)
    assert result.outcome is Outcome.OK, result
    assert n1.has("10.88.2.50/24", "hb1")
    assert (await n1.quickcheck(routed)).outcome is Outcome.OK


async def test_one_address_listing_checks_every_address(lab: Lab, on: On) -> None:
    n1 = on("n1")
    quiet = {"dad": "skip", "announce_count": 0}
    resources = [n1.resource(f"v{i}", address=f"10.88.1.{60 + i}/24", **quiet) for i in range(10)]
    resources += [
        n1.resource(f"w{i}", address=f"fd6c:6b00:88:1::{i + 1:x}0/64", **quiet) for i in range(5)
    ]
    for resource in resources[:-1]:
        assert (await n1.restore(resource)).outcome is Outcome.OK
    n1.host.argvs.clear()
    results = await n1.many(resources)
    assert n1.host.argvs == [("ip", "-j", "addr", "show")]
    assert [r.outcome for r in results.values()] == [Outcome.OK] * 14 + [Outcome.NOT_RUNNING]


async def test_the_ping_list_is_checked_in_one_process(lab: Lab, on: On) -> None:
    n1 = on("n1")
    client4, client6 = lab.client.address("public"), lab.client.address("public", 6)
    reachable = n1.resource(
        "reachable", address=VIP4, ping_list=["10.88.1.99", client4], dad="skip"
    )
    unreachable = n1.resource(
        "unreachable",
        address="10.88.1.51/24",
        ping_list=["10.88.1.99"],
        ping_timeout=0.3,
        dad="skip",
    )
    six = n1.resource("six", address=VIP6, ping_list=[client6], dad="skip")
    for resource in (reachable, unreachable, six):
        assert (await n1.restore(resource)).outcome is Outcome.OK
    n1.host.argvs.clear()
    started = time.monotonic()
    results = await n1.many([reachable, unreachable, six])
    assert time.monotonic() - started < 3
    assert results["reachable"].outcome is Outcome.OK, results
    assert results["six"].outcome is Outcome.OK, results
    assert results["unreachable"].outcome is Outcome.SOFT_FAILURE
    assert "10.88.1.99" in results["unreachable"].reason
    assert len(n1.host.argvs) == 2  # the listing, and one ping process for all


async def test_the_address_is_reannounced_while_in_service(lab: Lab, on: On) -> None:
    n1 = on("n1")
    vip = n1.resource("vip", address=VIP4, reannounce_interval=1.0, announce_count=1, dad="skip")
    assert (await n1.restore(vip)).outcome is Outcome.OK

    def announcements() -> int:
        count: int = n1.host.count(lambda argv: "announce" in argv)
        return count

    assert announcements() == 1  # by restore
    assert (await n1.quickcheck(vip)).outcome is Outcome.OK
    assert announcements() == 1, n1.host.argvs  # not due yet
    await anyio.sleep(1.05)
    assert (await n1.quickcheck(vip, probe=True)).outcome is Outcome.OK
    assert announcements() == 1  # a probe never announces
    assert (await n1.quickcheck(vip)).outcome is Outcome.OK
    assert announcements() == 2
    assert (await n1.quickcheck(vip)).outcome is Outcome.OK
    assert announcements() == 2
    # A split: n2 held the address for a while and announced it; the client believes n2.
    n2 = lab.node("n2")
    assert _client_ping(lab, "10.88.1.50")  # the client learns n1's MAC
    n2.run(["ip", "addr", "add", VIP4, "dev", "public"])
    n2.run([sys.executable, "-m", "lifekit_ip._tool", "announce", "public", "10.88.1.50"])
    n2.run(["ip", "addr", "del", VIP4, "dev", "public"])
    assert _client_neighbour(lab, "10.88.1.50") == _mac(lab, "n2")
    await anyio.sleep(1.05)
    # n1's next quickcheck re-announces, and the client comes back to n1.
    assert (await n1.quickcheck(vip)).outcome is Outcome.OK
    assert announcements() == 3
    assert _client_neighbour(lab, "10.88.1.50") == _mac(lab, "n1")
    assert _client_ping(lab, "10.88.1.50")
