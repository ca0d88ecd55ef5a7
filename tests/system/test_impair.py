"""System tests of lifekit.lab._impair: loss, rate cap and delay measured with real traffic.

Each test builds its own topology with a unique ``lkimp<hex>`` prefix: a switch namespace
holding one bridge, and two node namespaces ``a`` and ``b`` (10.213.7.1 and .2), each with
a veth whose switch-side end is a bridge port. Everything is removed in the fixture's
teardown, by name (namespaces) and by pid (processes), even when the test fails.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lifekit.lab._impair import (
    TABLE,
    Impairment,
    apply_impairment,
    clear_impairment,
    delay_relay_argv,
    ifb_name,
    relay_tap_name,
)

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
BRIDGE = "public"
A_IP, B_IP = "10.213.7.1", "10.213.7.2"

# Receiver: counts the bytes of one TCP connection for WINDOW seconds after the first one,
# then prints Mbit/s. Sender: writes as fast as it can until it is killed.
RECEIVER = """
import socket, sys, time
window = float(sys.argv[1])
srv = socket.socket()
srv.bind(("0.0.0.0", 5201))
srv.listen(1)
print("ready", flush=True)
srv.settimeout(5)
conn, _ = srv.accept()
conn.settimeout(3)
total, start = 0, None
while start is None or time.monotonic() - start < window:
    data = conn.recv(1 << 16)
    if not data:
        break
    if start is None:
        start = time.monotonic()
    total += len(data)
print(total * 8 / (time.monotonic() - start) / 1e6, flush=True)
"""
SENDER = """
import socket, sys
sock = socket.create_connection((sys.argv[1], 5201), timeout=5)
chunk = b"x" * 65536
while True:
    sock.sendall(chunk)
"""


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, bridges and qdiscs"
    for tool in ("ip", "nft", "tc", "ping"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (Debian: iproute2, nftables, iputils-ping)"
    return None


def _sh(*argv: str) -> str:
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
    return done.stdout


@dataclass
class Lab:
    """A switch namespace with one bridge and two nodes; ``ports`` maps node to port."""

    prefix: str
    commands: list[list[str]] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    transmitted: int = 0  # by the last ping

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def node(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def port(self, name: str) -> str:
        return f"{name}-{BRIDGE}"

    def run(self, argv: list[str]) -> None:
        self.commands.append(argv)
        subprocess.run(argv, check=True, timeout=30)

    def spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.procs.append(proc)
        return proc

    def ping(self, count: int, *, interval: float = 0.002, deadline: float = 5) -> tuple[int, str]:
        """Ping b from a; return how many replies came and ping's summary.

        Ping stops after *count* replies or *deadline* seconds; :attr:`transmitted` tells
        how many requests it sent.
        """
        done = subprocess.run(
            [
                *("ip", "netns", "exec", self.node("a"), "ping", "-q", "-c", str(count)),
                *("-i", str(interval), "-w", str(deadline), B_IP),
            ],
            capture_output=True,
            text=True,
            timeout=deadline + 10,
            check=False,
        )
        match = re.search(r"(\d+) packets transmitted, (\d+) received", done.stdout)
        assert match, done.stdout + done.stderr
        self.transmitted = int(match.group(1))
        return int(match.group(2)), done.stdout

    def rtt_ms(self) -> float:
        received, out = self.ping(10, interval=0.01)
        assert received == 10, out
        match = re.search(r"= [\d.]+/([\d.]+)/", out)
        assert match, out
        return float(match.group(1))

    def throughput(self, sender: str, receiver: str, *, window: float = 0.7) -> float:
        """Mbit/s of one TCP stream from node *sender* to node *receiver*."""
        dest = A_IP if receiver == "a" else B_IP
        rx = self.spawn(
            [
                "ip",
                "netns",
                "exec",
                self.node(receiver),
                sys.executable,
                "-c",
                RECEIVER,
                f"{window}",
            ]
        )
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        tx = self.spawn(
            ["ip", "netns", "exec", self.node(sender), sys.executable, "-c", SENDER, dest]
        )
        try:
            out, _ = rx.communicate(timeout=10)
        finally:
            tx.kill()
            tx.wait()
        assert rx.returncode == 0, out
        return float(out.strip().splitlines()[-1])


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the impairment tests: {reason}")
        pytest.skip(reason)
    lab = Lab(prefix=f"lkimp{secrets.token_hex(2)}")
    made: list[str] = []
    try:
        for ns in (lab.switch, lab.node("a"), lab.node("b")):
            _sh("ip", "netns", "add", ns)
            made.append(ns)
        sw = ["ip", "-n", lab.switch]
        _sh(*sw, "link", "add", BRIDGE, "type", "bridge")
        _sh(*sw, "link", "set", BRIDGE, "up")
        for name, addr in (("a", A_IP), ("b", B_IP)):
            node = ["ip", "-n", lab.node(name)]
            _sh(
                *sw,
                "link",
                "add",
                lab.port(name),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                lab.node(name),
            )
            _sh(*sw, "link", "set", lab.port(name), "master", BRIDGE, "up")
            _sh(*node, "link", "set", "lo", "up")
            _sh(*node, "link", "set", "eth0", "up")
            _sh(*node, "addr", "add", f"{addr}/24", "dev", "eth0")
        yield lab
    finally:
        for proc in lab.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _fill_neighbours(lab: Lab) -> None:
    # Resolve ARP before impairing, so a lost ARP frame cannot skew the counts.
    received, out = lab.ping(3, interval=0.01)
    assert received == 3, out


def test_impairment_validates_its_fields() -> None:
    with pytest.raises(ValueError, match=r"loss=1\.5 .* 0\.0 .* 1\.0"):
        Impairment(loss=1.5)
    with pytest.raises(ValueError, match=r"rate_kbit=0 .* from 8"):
        Impairment(rate_kbit=0)
    with pytest.raises(ValueError, match=r"delay=nan"):
        Impairment(delay=float("nan"))
    with pytest.raises(ValueError, match=r"port name 'a/b'"):
        apply_impairment("ns", "a/b", Impairment(loss=0.1), bridge="br", run=print)
    assert Impairment().is_none


def test_total_loss_drops_everything_and_clear_restores(lab: Lab) -> None:
    _fill_neighbours(lab)
    total = Impairment(loss=1.0)
    apply_impairment(lab.switch, lab.port("a"), total, bridge=BRIDGE, run=lab.run)
    received, out = lab.ping(20, interval=0.01, deadline=1)
    assert received == 0, out
    clear_impairment(lab.switch, lab.port("a"), total, bridge=BRIDGE, run=lab.run)
    received, out = lab.ping(20, interval=0.005)
    assert received == 20, out


def test_partial_loss_drops_about_the_expected_share(lab: Lab) -> None:
    _fill_neighbours(lab)
    partial = Impairment(loss=0.3)
    apply_impairment(lab.switch, lab.port("a"), partial, bridge=BRIDGE, run=lab.run)
    # 0.3 each way: a round trip survives with probability 0.7 ** 2, so 51 % are lost.
    received, out = lab.ping(200, deadline=3)
    assert 0.25 <= 1 - received / lab.transmitted <= 0.75, out


def test_clearing_one_port_leaves_the_other_alone(lab: Lab) -> None:
    both = Impairment(loss=0.2, rate_kbit=8000)
    for node in ("a", "b"):
        apply_impairment(lab.switch, lab.port(node), both, bridge=BRIDGE, run=lab.run)
    clear_impairment(lab.switch, lab.port("a"), both, bridge=BRIDGE, run=lab.run)
    rules = _sh("ip", "netns", "exec", lab.switch, "nft", "list", "table", "bridge", TABLE)
    assert "to_b-public" in rules
    assert "a-public" not in rules
    qdiscs = _sh("tc", "-n", lab.switch, "qdisc", "show")
    assert "dev b-public root" in qdiscs
    assert "tbf" not in _sh("tc", "-n", lab.switch, "qdisc", "show", "dev", "a-public")
    links = _sh("ip", "-n", lab.switch, "-o", "link", "show")
    assert ifb_name("b-public") in links
    assert ifb_name("a-public") not in links


def test_rate_cap_slows_both_directions(lab: Lab) -> None:
    assert lab.throughput("a", "b") > 20
    cap = Impairment(rate_kbit=8000)
    apply_impairment(lab.switch, lab.port("a"), cap, bridge=BRIDGE, run=lab.run)
    from_node = lab.throughput("a", "b")
    to_node = lab.throughput("b", "a")
    assert 2 < from_node < 12, from_node
    assert 2 < to_node < 12, to_node
    clear_impairment(lab.switch, lab.port("a"), cap, bridge=BRIDGE, run=lab.run)
    assert lab.throughput("b", "a") > 20


def test_delay_relay_adds_the_delay_each_way(lab: Lab) -> None:
    _fill_neighbours(lab)
    assert lab.rtt_ms() < 10
    slow = Impairment(delay=0.05)
    port = lab.port("a")
    apply_impairment(lab.switch, port, slow, bridge=BRIDGE, run=lab.run)
    relay = lab.spawn(delay_relay_argv(lab.switch, port, slow.delay))
    assert relay.stdout is not None
    assert relay.stdout.readline().strip() == "ready"
    rtt = lab.rtt_ms()
    assert 95 <= rtt <= 200, rtt
    links = _sh("ip", "-n", lab.switch, "-o", "link", "show", "master", BRIDGE)
    assert relay_tap_name(port) in links
    assert port not in links
    clear_impairment(lab.switch, port, slow, bridge=BRIDGE, run=lab.run)
    # Deleting its TAP device ends the relay by itself.
    assert relay.wait(timeout=5) == 0
    assert lab.rtt_ms() < 10
    assert port in _sh("ip", "-n", lab.switch, "-o", "link", "show", "master", BRIDGE)


def test_delay_relay_stops_on_sigterm_and_loss_still_applies(lab: Lab) -> None:
    _fill_neighbours(lab)
    both = Impairment(delay=0.02, loss=1.0)
    port = lab.port("a")
    apply_impairment(lab.switch, port, both, bridge=BRIDGE, run=lab.run)
    relay = lab.spawn(delay_relay_argv(lab.switch, port, both.delay))
    assert relay.stdout is not None
    assert relay.stdout.readline().strip() == "ready"
    received, out = lab.ping(10, interval=0.01, deadline=1)
    assert received == 0, out
    started = time.monotonic()
    relay.terminate()
    assert relay.wait(timeout=5) == 0
    assert time.monotonic() - started < 2
    clear_impairment(lab.switch, port, both, bridge=BRIDGE, run=lab.run)
    assert lab.rtt_ms() < 10
