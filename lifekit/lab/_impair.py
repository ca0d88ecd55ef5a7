"""Link impairments for one switch port of the lab: loss, a bandwidth cap and a delay.

This module owns the kernel state that slows or drops frames on one port of a lab network
(the switch-side end of a node's veth, a port of that network's bridge inside the switch
namespace), and the userspace delay relay. The lab decides *when*; this module knows *how*.
Every command goes through a ``run`` callable that the lab supplies, so the lab can log the
commands and collect their errors.

The kernel here has no ``sch_netem`` (and no modules to load), so netem's one-liner is not
available. What is built instead, and what it emulates:

**Loss** (:attr:`Impairment.loss`, a fraction of frames dropped *in each direction*): an
nftables bridge-family table ``lifekit_impair`` in the switch namespace, with one base chain
on the bridge ``forward`` hook that jumps, through two verdict maps keyed by port name
(``from_port`` on ``iifname``, ``to_port`` on ``oifname``), into a per-port chain holding
``numgen random mod 1000000 < N drop``. Independent (Bernoulli) loss: no bursts, no
correlation. Only *forwarded* frames are affected: frames the bridge delivers to itself (an
address on the bridge device) are not, and the lab puts no address there. A round trip
(ping) survives with probability ``(1 - loss) ** 2``.

**Rate** (:attr:`Impairment.rate_kbit`, a cap in *each direction*): a ``tbf`` root qdisc on
the port (frames towards the node) and, for frames from the node, an ``ingress`` qdisc on
the bridge-facing port whose ``u32`` match-all filter redirects (``mirred``) every frame to
an IFB device that carries another ``tbf``. This is shaping (a queue of at most 50 ms), not
policing, so TCP settles close to the cap. nftables ``limit rate over ... bytes/second`` was
measured and rejected: its bucket holds one whole second of tokens plus the burst, so a
one-second transfer capped at 8 Mbit/s measured 15.6 Mbit/s (``tc police`` is not built).

**Delay** (:attr:`Impairment.delay`, seconds added *in each direction*, so a round trip
grows by twice the value): neither netem nor NFQUEUE is usable here. nftables ``queue``
fails with ``Error: Could not process rule: No such file or directory`` (``CONFIG_NFT_QUEUE``
is not set), and the xtables ``NFQUEUE`` target would need an ``iptables`` binary, which is
not installed, plus ``br_netfilter``. The delay is therefore a userspace relay
(:func:`delay_relay_argv`, ``python -m lifekit.lab._impair delay ...``): the port leaves the
bridge and a TAP device (:func:`relay_tap_name`) takes its place; the relay reads frames
from the port with an ``AF_PACKET`` socket and from the TAP, holds each one for the delay,
and writes it to the other side. Both sockets use virtio-net headers, so GSO/TSO frames
cross unchanged (no MTU trouble, no software segmentation). It is a constant delay with no
jitter and no reordering; every protocol (ARP, IPv6) is delayed alike. Frames beyond 10000
waiting per direction are dropped, as netem's queue limit would.

Measured in this sandbox (two node namespaces on one bridge, veth, kernel 6.18, 2 cores):

- loss 0.5 on one port: 200 fast pings lost 76 % (expected 1 - 0.5 ** 2 = 75 %); loss 0.3:
  49 % (expected 51 %); loss 1.0: 100 %. Cleared: 0 %.
- rate 8000 kbit: one TCP stream over 1 s, node->bridge 7.80 Mbit/s and bridge->node
  7.80 Mbit/s; uncapped 12-14 Gbit/s.
- delay 0.05: ping RTT 0.07 ms -> 101.4 ms average (min 100.8, max 102.2, mdev 0.35); delay
  0.001: 2.6 ms. Relay throughput: about 4 Gbit/s at 1 ms (GSO frames cross whole); one TCP
  stream reaches 64 Mbit/s in its first second at 50 ms (slow start over a 100 ms RTT).
- delay 0.05 with rate 8000: 101.4 ms RTT and 5.1 Mbit/s in the first second.

The lab must keep the impairment it applied: :func:`clear_impairment` takes it, so that it
removes exactly the qdiscs, IFB, TAP and rules that :func:`apply_impairment` created for that
port and touches no other port. Any other nftables rule the lab keys on the port name (a
link cut, a partition) must also name :func:`relay_tap_name` while a delay is applied,
because then the frames reach the bridge through the TAP device.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import fcntl
import hashlib
import math
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "TABLE",
    "Impairment",
    "apply_impairment",
    "clear_impairment",
    "delay_relay_argv",
    "ifb_name",
    "relay_tap_name",
    "run_delay_relay",
]

TABLE = "lifekit_impair"
"""The nftables bridge-family table, in the switch namespace, holding the loss rules."""

#: Resolution of the loss fraction: ``numgen random mod LOSS_SCALE``.
LOSS_SCALE = 1_000_000
#: Upper bound of :attr:`Impairment.delay`, in seconds.
MAX_DELAY = 10.0
#: Bounds of :attr:`Impairment.rate_kbit`: tbf cannot shape below a few kbit/s meaningfully.
MIN_RATE_KBIT = 8
MAX_RATE_KBIT = 100_000_000
#: Frames the relay holds per direction before it drops new ones (netem's default limit is
#: 1000 frames; GSO frames make 10000 still small in bytes for a lab).
RELAY_QUEUE_LIMIT = 10_000

_PORT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_NS_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _default_run(argv: list[str]) -> None:
    subprocess.run(argv, check=True)


@dataclass(frozen=True)
class Impairment:
    """What happens to frames crossing one switch port. The default impairs nothing.

    :param loss: fraction of frames dropped, independently, in each direction (0 to 1).
    :param rate_kbit: bandwidth cap in kbit/s (1000 bit/s) in each direction, or ``None``.
    :param delay: seconds each frame is held in each direction (a round trip grows by twice
        this); 0 means no relay.
    """

    loss: float = 0.0
    rate_kbit: int | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.loss, bool)
            or not isinstance(self.loss, int | float)
            or not 0.0 <= self.loss <= 1.0
        ):
            raise ValueError(
                f"Impairment loss={self.loss!r} is out of range: give a fraction of frames "
                "from 0.0 (none dropped) to 1.0 (all dropped)"
            )
        if self.rate_kbit is not None and (
            isinstance(self.rate_kbit, bool)
            or not isinstance(self.rate_kbit, int)
            or not MIN_RATE_KBIT <= self.rate_kbit <= MAX_RATE_KBIT
        ):
            raise ValueError(
                f"Impairment rate_kbit={self.rate_kbit!r} is out of range: give an integer "
                f"from {MIN_RATE_KBIT} to {MAX_RATE_KBIT} kbit/s, or None for no cap"
            )
        if (
            isinstance(self.delay, bool)
            or not isinstance(self.delay, int | float)
            or not 0.0 <= self.delay <= MAX_DELAY  # also refuses NaN
        ):
            raise ValueError(
                f"Impairment delay={self.delay!r} is out of range: give seconds from 0.0 "
                f"to {MAX_DELAY} (added in each direction)"
            )

    @property
    def is_none(self) -> bool:
        """True when this impairment leaves frames alone."""
        return self.loss == 0.0 and self.rate_kbit is None and self.delay == 0.0


def _check_names(switch_ns: str, port: str, bridge: str | None = None) -> None:
    if not _NS_RE.fullmatch(switch_ns):
        raise ValueError(
            f"switch namespace name {switch_ns!r} is invalid: use letters, digits, '_', '.', '-'"
        )
    for what, name in (("port", port), ("bridge", bridge)):
        if name is not None and not _PORT_RE.fullmatch(name):
            raise ValueError(
                f"{what} name {name!r} is invalid: use 1 to 15 letters, digits, '_', '.', '-', "
                "starting with a letter or digit"
            )


def _derived_name(prefix: str, port: str) -> str:
    # Interface names are at most 15 characters and the port name may use all of them, so
    # the helper devices get a digest of it; names only need to be unique in the switch ns.
    return prefix + hashlib.blake2b(port.encode(), digest_size=5).hexdigest()


def relay_tap_name(port: str) -> str:
    """The TAP device that stands for *port* in its bridge while a delay is applied."""
    return _derived_name("lkd-", port)


def ifb_name(port: str) -> str:
    """The IFB device that shapes the frames coming from the node on *port*."""
    return _derived_name("lki-", port)


def _burst_bytes(rate_kbit: int) -> int:
    # 20 ms worth of tokens, and never less than a few full frames, or tbf stalls.
    return max(rate_kbit * 1000 // 8 // 50, 4 * 1514)


def _tbf(rate_kbit: int) -> list[str]:
    # A 50 ms queue: enough for TCP to fill the link, short enough to stay a "link".
    burst = str(_burst_bytes(rate_kbit))
    return ["tbf", "rate", f"{rate_kbit}kbit", "burst", burst, "latency", "50ms"]


def _loss_rule(loss: float) -> str:
    if loss >= 1.0:
        return "drop"
    return f"numgen random mod {LOSS_SCALE} < {round(loss * LOSS_SCALE)} drop"


def _nft(switch_ns: str, script: Sequence[str]) -> list[str]:
    # nft parses all its arguments as one input and commits it as one transaction, so a
    # script either applies whole or not at all.
    return ["ip", "netns", "exec", switch_ns, "nft", "\n".join(script)]


def _nft_base() -> list[str]:
    t = f"bridge {TABLE}"
    return [
        f"add table {t}",
        f"add map {t} from_port {{ type ifname : verdict; }}",
        f"add map {t} to_port {{ type ifname : verdict; }}",
        f"add chain {t} forward {{ type filter hook forward priority -10; policy accept; }}",
        # Flushed and refilled so that running this again never duplicates the two rules.
        f"flush chain {t} forward",
        f"add rule {t} forward iifname vmap @from_port",
        f"add rule {t} forward oifname vmap @to_port",
    ]


def _nft_port(port: str, loss: float | None) -> list[str]:
    """Script that sets (loss given) or removes (loss None) the loss chains of *port*.

    Removal first adds what it deletes, so it succeeds whatever was there before.
    """
    t = f"bridge {TABLE}"
    names = (port, relay_tap_name(port))
    script = _nft_base()
    for direction in ("from", "to"):
        chain = f"{direction}_{port}"
        script += [f"add chain {t} {chain}", f"flush chain {t} {chain}"]
        elements = ", ".join(f'"{name}" : jump {chain}' for name in names)
        script.append(f"add element {t} {direction}_port {{ {elements} }}")
        if loss is not None:
            script.append(f"add rule {t} {chain} {_loss_rule(loss)}")
        else:
            keys = ", ".join(f'"{name}"' for name in names)
            script += [
                f"delete element {t} {direction}_port {{ {keys} }}",
                f"delete chain {t} {chain}",
            ]
    return script


def apply_impairment(
    switch_ns: str,
    port: str,
    impairment: Impairment,
    *,
    bridge: str,
    run: Callable[[list[str]], None] = _default_run,
) -> None:
    """Impair the frames crossing *port*, a port of *bridge* in namespace *switch_ns*.

    The port must carry no impairment yet: to change one, :func:`clear_impairment` the old
    one first. With a delay, *port* leaves *bridge* and :func:`relay_tap_name` joins it;
    traffic through the port stops until the relay (:func:`delay_relay_argv`) runs.

    :param switch_ns: the switch network namespace.
    :param port: the switch-side veth end of the node.
    :param impairment: what to do to the frames; an empty one runs no command.
    :param bridge: the bridge *port* belongs to.
    :param run: runs one argv and raises if it fails.
    """
    _check_names(switch_ns, port, bridge)
    if impairment.is_none:
        return
    ns = ["-n", switch_ns]
    facing = port  # the device through which the node's frames enter the bridge
    if impairment.delay > 0:
        facing = relay_tap_name(port)
        run(["ip", *ns, "tuntap", "add", "dev", facing, "mode", "tap"])
        run(["ip", *ns, "link", "set", port, "nomaster"])
        run(["ip", *ns, "link", "set", facing, "master", bridge, "up"])
    if impairment.rate_kbit is not None:
        shaper = _tbf(impairment.rate_kbit)
        # Towards the node; the delay relay sends through this qdisc too.
        run(["tc", *ns, "qdisc", "replace", "dev", port, "root", *shaper])
        ifb = ifb_name(port)
        run(["ip", *ns, "link", "add", ifb, "type", "ifb"])
        run(["ip", *ns, "link", "set", ifb, "up"])
        run(["tc", *ns, "qdisc", "replace", "dev", ifb, "root", *shaper])
        run(["tc", *ns, "qdisc", "replace", "dev", facing, "handle", "ffff:", "ingress"])
        run([
            "tc", *ns, "filter", "add", "dev", facing, "parent", "ffff:", "protocol", "all",
            "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
        ])  # fmt: skip
    if impairment.loss > 0:
        run(_nft(switch_ns, _nft_port(port, impairment.loss)))


def clear_impairment(
    switch_ns: str,
    port: str,
    applied: Impairment,
    *,
    bridge: str,
    run: Callable[[list[str]], None] = _default_run,
) -> None:
    """Undo :func:`apply_impairment` of *applied* on *port*; other ports are left alone.

    The loss rules of *port* are removed whatever *applied* says (that step cannot fail on
    a port without rules). Stop the delay relay before or after: once its TAP device is
    deleted here, it exits on its own.

    :param applied: the impairment last applied to *port*.
    """
    _check_names(switch_ns, port, bridge)
    ns = ["-n", switch_ns]
    run(_nft(switch_ns, _nft_port(port, None)))
    if applied.rate_kbit is not None:
        # Replaced first so the delete cannot fail even if the qdisc went away meanwhile.
        run(["tc", *ns, "qdisc", "replace", "dev", port, "root", "pfifo"])
        run(["tc", *ns, "qdisc", "del", "dev", port, "root"])
        run(["tc", *ns, "qdisc", "replace", "dev", port, "handle", "ffff:", "ingress"])
        run(["tc", *ns, "qdisc", "del", "dev", port, "handle", "ffff:", "ingress"])
        run(["ip", *ns, "link", "del", ifb_name(port)])
    if applied.delay > 0:
        # Deleting the TAP also deletes its ingress qdisc.
        run(["ip", *ns, "link", "del", relay_tap_name(port)])
        run(["ip", *ns, "link", "set", port, "master", bridge])


def delay_relay_argv(
    switch_ns: str, port: str, delay: float, *, python: str = sys.executable
) -> list[str]:
    """The command that runs the delay relay for *port*, applied with *delay* seconds.

    Start it after :func:`apply_impairment`. It prints ``ready`` on stdout once it relays,
    exits 0 on SIGTERM or SIGINT, and exits by itself when :func:`clear_impairment` deletes
    its TAP device. Stop it by its pid.
    """
    _check_names(switch_ns, port)
    Impairment(delay=delay)  # validates
    return [
        "ip", "netns", "exec", switch_ns,
        python, "-m", "lifekit.lab._impair", "delay", port, repr(float(delay)),
    ]  # fmt: skip


# --- the relay, which runs inside the switch namespace -------------------------------------

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6 = 0x01, 0x02, 0x04
_SOL_PACKET = 263
_PACKET_VNET_HDR = 15
_PACKET_IGNORE_OUTGOING = 23
_PACKET_OUTGOING = 4
_ETH_P_ALL = 0x0003
# A GSO frame is at most 64 KiB plus its virtio-net header (10 bytes) and Ethernet header.
_FRAME_MAX = 65536 + 64


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        ifreq = struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
        fcntl.ioctl(fd, _TUNSETIFF, ifreq)
        # Accept checksum-offloaded and TSO frames from the bridge, so they reach us whole.
        fcntl.ioctl(fd, _TUNSETOFFLOAD, _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_port(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    try:
        sock.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
        sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
        sock.bind((name, _ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def run_delay_relay(port: str, delay: float, *, ready: Callable[[], None] = lambda: None) -> int:
    """Relay frames between *port* and its TAP, each held *delay* seconds; blocks.

    Runs in the switch namespace, after :func:`apply_impairment` with that delay. Returns 0
    on SIGTERM/SIGINT or when the TAP device disappears.
    """
    Impairment(delay=delay)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        # TUNSETIFF would create a fresh TAP outside the bridge: insist on the applied one.
        socket.if_nametoindex(relay_tap_name(port))
        tap = _open_tap(relay_tap_name(port))
    except OSError as exc:
        raise OSError(
            exc.errno or errno.ENODEV,
            f"cannot attach to TAP {relay_tap_name(port)!r} of port {port!r} ({exc}): "
            "run apply_impairment() with a delay first, in this network namespace",
        ) from exc
    sock = _open_port(port)
    # Constant delay, so each direction is a FIFO whose due times only grow.
    to_bridge: collections.deque[tuple[float, bytes]] = collections.deque()
    to_node: collections.deque[tuple[float, bytes]] = collections.deque()
    sel = selectors.DefaultSelector()
    sel.register(tap, selectors.EVENT_READ, "tap")
    sel.register(sock, selectors.EVENT_READ, "port")
    ready()
    try:
        while not stop:
            now = time.monotonic()
            while to_bridge and to_bridge[0][0] <= now:
                try:
                    os.write(tap, to_bridge.popleft()[1])
                except OSError as exc:
                    if exc.errno in (errno.EBADFD, errno.ENODEV, errno.EIO):
                        return 0  # the TAP was deleted: the delay was cleared
                    # Anything else (a full queue, a link cut) loses this frame, as a wire would.
            while to_node and to_node[0][0] <= now:
                # Port down or qdisc full: the frame is lost, as on a wire.
                with contextlib.suppress(OSError):
                    sock.send(to_node.popleft()[1])
            due = [q[0][0] for q in (to_bridge, to_node) if q]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            try:
                events = sel.select(timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for key, _ in events:
                if key.data == "tap":
                    if not _drain_tap(tap, to_node, now + delay):
                        return 0
                else:
                    _drain_port(sock, to_bridge, now + delay)
        return 0
    finally:
        sel.close()
        sock.close()
        os.close(tap)


def _drain_tap(tap: int, queue: collections.deque[tuple[float, bytes]], due: float) -> bool:
    for _ in range(64):  # bounded so one busy side cannot starve the other
        try:
            frame = os.read(tap, _FRAME_MAX)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno in (errno.EBADFD, errno.ENODEV, errno.EIO):
                return False
            raise
        if len(queue) < RELAY_QUEUE_LIMIT:
            queue.append((due, frame))
    return True


def _drain_port(
    sock: socket.socket, queue: collections.deque[tuple[float, bytes]], due: float
) -> None:
    for _ in range(64):
        try:
            frame, addr = sock.recvfrom(_FRAME_MAX)
        except BlockingIOError:
            return
        except OSError:
            return  # ENETDOWN after a link cut is reported once; keep relaying
        if addr[2] != _PACKET_OUTGOING and len(queue) < RELAY_QUEUE_LIMIT:
            queue.append((due, frame))


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifekit.lab._impair",
        description="Lab link impairments. Run inside the switch network namespace.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    delay = sub.add_parser("delay", help="relay frames of PORT, holding each DELAY seconds")
    delay.add_argument("port")
    delay.add_argument("delay", type=float)
    args = parser.parse_args(argv)
    if not math.isfinite(args.delay):
        parser.error(f"delay {args.delay!r} must be a finite number of seconds")

    def ready() -> None:
        print("ready", flush=True)

    return run_delay_relay(args.port, args.delay, ready=ready)


if __name__ == "__main__":
    sys.exit(_main())
