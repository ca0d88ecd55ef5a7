"""fs kit benchmarks: restore, remove and quickcheck latency of an ext4 mount on a lab node.

Run (as root):  .venv/bin/python benchmarks/bench_fs.py               (full size, a table)
                .venv/bin/python benchmarks/bench_fs.py --size smoke  (what CI runs: seconds)

One lab node (no client, a 16 MiB LUN) with ext4 on its plain path (a loop device). The kit's
actions run through the node's host exactly as the runtime runs them, so every figure
includes starting the node-side helpers (``python -m lifekit_fs._check``, ``_holders``) and
``nsenter`` into the node. Measured, wall clock, median and max of N runs:

* restore (``e2fsck -p``, mount, option check) and remove (holder walk, umount), alternated;
* restore with ``fsck = "never"``, to show what the e2fsck costs;
* quickcheck at each depth: ``mounted`` (mountinfo and options), ``read`` (also statfs and a
  direct 64 KiB read of the device in a detached worker), ``write`` (also a write and fsync);
* quickcheck_many of 10 resources (tmpfs mounts) in one cycle, against 10 single checks.

Speed never fails the run: machines are noisy; benchmarks report, tests assert behaviour.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from lifekit_fs import FsKit

from lifekit.kit import ActionContext, NodeContext, Outcome, Resource, Result
from lifekit.lab import Lab, LabSpec

SIZES = {"full": {"repeats": 25}, "smoke": {"repeats": 1}}
SPEC = LabSpec(nodes=("n1",), networks=("public",), client=False, lun_size=16 << 20)
MOUNT_POINT = "/run/fs-bench"


def _resource(tag: str, **params: Any) -> Resource:
    kit = FsKit()
    checked = dict(kit.validate(tag, kit.schema.validate(tag, params)))
    return Resource(tag=tag, kind="fs", params=checked)


async def _timed(
    rows: dict[str, list[float]], name: str, action: Callable[[], Awaitable[Result]]
) -> Result:
    started = time.perf_counter()
    result = await action()
    rows.setdefault(name, []).append(time.perf_counter() - started)
    if result.is_failure or (result.outcome is Outcome.NOT_RUNNING and "remove" not in name):
        raise RuntimeError(f"{name} returned {result}")
    return result


async def run(repeats: int) -> dict[str, list[float]]:
    """Every measurement, in seconds, by row name."""
    rows: dict[str, list[float]] = {}
    with Lab(SPEC) as lab, tempfile.TemporaryDirectory() as state:
        node = lab.node("n1")
        node.mkfs()
        kit = FsKit()
        context = NodeContext(
            name="n1", host=node.host(), state_dir=Path(state), log=logging.getLogger("bench")
        )

        def ctx(tag: str) -> ActionContext:
            return ActionContext(node=context, tag=tag, timeout=60.0)

        base = {"device": node.disk, "mount_point": MOUNT_POINT, "fstype": "ext4"}
        auto = _resource("data", **base)
        never = _resource("data", **base, fsck="never")
        for _ in range(repeats):
            await _timed(
                rows, "restore (fsck auto: e2fsck -p)", lambda: kit.restore(auto, ctx("data"))
            )
            await _timed(rows, "remove", lambda: kit.remove(auto, ctx("data")))
            await _timed(rows, "restore (fsck never)", lambda: kit.restore(never, ctx("data")))
            await _timed(rows, "remove (fsck never run)", lambda: kit.remove(never, ctx("data")))
        await kit.restore(auto, ctx("data"))
        for depth in ("mounted", "read", "write"):
            checked = _resource("data", **base, check_depth=depth)
            for _ in range(repeats):
                await _timed(
                    rows,
                    f"quickcheck, depth {depth}",
                    lambda checked=checked: kit.quickcheck(checked, ctx("data")),  # type: ignore[misc]
                )
        await kit.remove(auto, ctx("data"))
        many = [
            _resource(
                f"t{index}",
                device=f"bench{index}",
                mount_point=f"{MOUNT_POINT}-{index}",
                fstype="tmpfs",
                check_depth="read",
            )
            for index in range(10)
        ]
        for resource in many:
            await kit.restore(resource, ctx(resource.tag))
        batch = ActionContext(node=context, tag=None, timeout=60.0)
        for _ in range(repeats):
            started = time.perf_counter()
            results = await kit.quickcheck_many(many, batch)
            rows.setdefault("quickcheck_many, 10 tmpfs (read)", []).append(
                time.perf_counter() - started
            )
            assert all(result.outcome is Outcome.OK for result in results.values()), results
            started = time.perf_counter()
            for resource in many:
                await kit.quickcheck(resource, ctx(resource.tag))
            rows.setdefault("10 x quickcheck, 10 tmpfs (read)", []).append(
                time.perf_counter() - started
            )
        for resource in many:
            await kit.remove(resource, ctx(resource.tag))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    repeats = SIZES[args.size]["repeats"]
    rows = anyio.run(run, repeats)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"fs kit, ext4 on a lab node's plain path, {repeats} runs each (milliseconds)")
    print(f"{'measurement':40} {'median':>8} {'max':>8}")
    for name, values in rows.items():
        print(
            f"{name.strip():40} {statistics.median(values) * 1000:8.1f} {max(values) * 1000:8.1f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
