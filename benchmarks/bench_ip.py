"""ip kit benchmarks: restore, remove and quickcheck latency, and 100 addresses in one check.

Run (as root):  .venv/bin/python benchmarks/bench_ip.py               (full size, a table)
                .venv/bin/python benchmarks/bench_ip.py --size smoke  (what CI runs: seconds)

Everything runs in a lab (one node ``n1`` on ``public``, a client), with the kit's commands
executed inside the node through its :class:`~lifekit.kit.Host`, as in the kit's tests; so each
command pays the lab's ``nsenter`` (a few milliseconds) as a real node would not. Measured, wall
clock, each over ``repeats`` runs:

* restore / quickcheck / remove of one address: IPv4 with ``dad = "wait"`` (``arping -D``
  probes for a duplicate for about a second) and ``"skip"``, IPv6 with ``"wait"`` (the kernel's
  DAD) and ``"skip"`` (``nodad``); announcements at their default (the first one sent before
  restore returns, the second from a background process);
* one ``quickcheck_many`` of 100 addresses in service (50 IPv4, 50 IPv6; 10 at smoke
  size): one ``ip -j addr show`` for all; and, for comparison, the same addresses checked one
  by one (``quickcheck`` each, one ``ip`` each), as a kit without a batched check would;
* a peer: iputils ``arping -U -c 1``, which the kit does not use to announce because it waits
  a whole interval after its packet; the kit's own announcement for comparison.

The lab is torn down in a ``finally`` block and the benchmark checks that nothing of it is left
(exit status 1 if something is). Speed never fails the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import lifekit_ip
from lifekit_ip import IpKit

from lifekit.kit import ActionContext, NodeContext, Outcome, Resource, Result
from lifekit.lab import Lab, LabSpec, leftovers

# repetitions of each single-address measurement and of the batched check, and the batch size
SIZES = {
    "full": {"repeats": 20, "batch_repeats": 20, "batch": 100},
    "smoke": {"repeats": 1, "batch_repeats": 1, "batch": 10},
}
SPEC = LabSpec(nodes=("n1",), networks=("public",), lun_size=0)


class Samples:
    """Wall times of one measurement, in seconds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: list[float] = []

    async def time(self, call: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        value = await call()
        self.seconds.append(time.perf_counter() - started)
        return value


class Bench:
    """The kit on the lab's node n1."""

    def __init__(self, lab: Lab, state_dir: Path) -> None:
        self.lab = lab
        self.kit = IpKit()
        self.node = NodeContext(
            name="n1",
            host=lab.node("n1").host(),
            state_dir=state_dir,
            log=logging.getLogger("bench.ip"),
        )

    def resource(self, tag: str, **params: Any) -> Resource:
        checked = self.kit.validate(tag, self.kit.schema.validate(tag, params))
        return Resource(tag=tag, kind="ip", params=dict(checked))

    def ctx(self, tag: str | None) -> ActionContext:
        return ActionContext(node=self.node, tag=tag, timeout=60.0)

    async def act(self, action: str, resource: Resource, want: Outcome) -> Result:
        result: Result = await getattr(self.kit, action)(resource, self.ctx(resource.tag))
        if result.outcome is not want:
            raise RuntimeError(f"{action} of {resource.tag}: {result} (expected {want.value})")
        return result


async def bench_one(bench: Bench, resource: Resource, rows: list[Samples], repeats: int) -> None:
    label = f"{resource.params['address']} dad={resource.params['dad']}"
    restore, check, remove = (
        Samples(f"{what}: {label}") for what in ("restore", "quickcheck", "remove")
    )
    for _ in range(repeats):
        await restore.time(lambda: bench.act("restore", resource, Outcome.OK))
        await check.time(lambda: bench.act("quickcheck", resource, Outcome.OK))
        await remove.time(lambda: bench.act("remove", resource, Outcome.OK))
    rows += [restore, check, remove]


async def bench_batch(bench: Bench, rows: list[Samples], repeats: int, size: int) -> None:
    quiet = {"dad": "skip", "announce_count": 0}
    half = size // 2
    resources = [
        bench.resource(f"v4-{i}", address=f"10.88.1.{i + 1}/24", **quiet)
        for i in range(100, 100 + half)
    ]
    resources += [
        bench.resource(f"v6-{i}", address=f"fd6c:6b00:88:1::1:{i:x}/64", **quiet)
        for i in range(size - half)
    ]
    for resource in resources:
        await bench.act("restore", resource, Outcome.OK)
    many = Samples(f"quickcheck_many: {size} addresses, one cycle")
    single = Samples(f"peer: {size} addresses checked one by one")

    async def one_cycle() -> None:
        results = await bench.kit.quickcheck_many(resources, bench.ctx(None))
        bad = [f"{tag}: {r}" for tag, r in results.items() if r.outcome is not Outcome.OK]
        if bad:
            raise RuntimeError(f"quickcheck_many: {bad[:3]}")

    async def one_by_one() -> None:
        for resource in resources:
            await bench.act("quickcheck", resource, Outcome.OK)

    for _ in range(repeats):
        await many.time(one_cycle)
        await single.time(one_by_one)
    for resource in resources:
        await bench.act("remove", resource, Outcome.OK)
    rows += [many, single]


async def bench_announce(bench: Bench, rows: list[Samples], repeats: int) -> None:
    host = bench.node.host
    await host.run(["ip", "addr", "add", "10.88.1.60/24", "dev", "public"])
    ours = Samples("kit's announcement (one gratuitous ARP, helper process)")
    arping = Samples("peer: iputils arping -U -c 1 (waits one interval)")
    helper = str(Path(lifekit_ip.__file__).with_name("_tool.py"))
    tool = [sys.executable, "-I", "-S", helper, "announce", "public", "10.88.1.60"]
    for _ in range(max(1, repeats // 4)):  # arping takes a second a run
        await ours.time(lambda: host.run(tool))
        await arping.time(
            lambda: host.run(["arping", "-q", "-U", "-c", "1", "-I", "public", "10.88.1.60"])
        )
    await host.run(["ip", "addr", "del", "10.88.1.60/24", "dev", "public"])
    rows += [ours, arping]


async def run(lab: Lab, repeats: int, batch_repeats: int, batch: int) -> list[Samples]:
    rows: list[Samples] = []
    with tempfile.TemporaryDirectory(prefix="lkbench-ip-") as state:
        bench = Bench(lab, Path(state))
        try:
            for address in ("10.88.1.50/24", "fd6c:6b00:88:1::50/64"):
                for dad in ("wait", "skip"):
                    resource = bench.resource("vip", address=address, dad=dad)
                    await bench_one(bench, resource, rows, repeats)
            await bench_batch(bench, rows, batch_repeats, batch)
            await bench_announce(bench, rows, repeats)
        finally:
            await bench.kit.close()
    return rows


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms" if seconds >= 0.01 else f"{1000 * seconds:.1f} ms"


def print_table(rows: list[Samples], *, size: str) -> None:
    header = ("measurement", "runs", "median", "max")
    cells = [
        (
            row.name,
            str(len(row.seconds)),
            _ms(statistics.median(row.seconds)),
            _ms(max(row.seconds)),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *cells]) for column in range(4)]
    print(f"lifekit ip kit benchmarks (size {size}; wall time, in a lab node)")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for line in [header, *cells]:
        print(
            "  ".join(
                text.ljust(width) if column == 0 else text.rjust(width)
                for column, (text, width) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_ip.py needs root (the lab makes namespaces)")
        return 2
    size = SIZES[args.size]
    # Lab names are [a-z0-9]{1,12}; "lkbip" marks this benchmark's labs.
    lab = Lab(SPEC, name="lkbip" + secrets.token_hex(3))
    try:
        lab.up()
        rows = anyio.run(run, lab, size["repeats"], size["batch_repeats"], size["batch"])
    finally:
        lab.down()
        left = leftovers([lab.name])
    print_table(rows, size=args.size)
    if left:
        print(f"LEFTOVERS: {left}")
        return 1
    print("no leftovers: the lab is gone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
