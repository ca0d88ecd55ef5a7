"""Core benchmarks: bring-up of 10,000 resources, quickcheck overhead, import time, idle RSS.

Run:  .venv/bin/python benchmarks/bench_core.py            (full size, prints a table)
      .venv/bin/python benchmarks/bench_core.py --size smoke   (what CI runs: seconds)

Everything goes through the real runtime (lifekit.Node on anyio) with awaited no-op kit calls,
on asyncio and on trio. Each measurement runs in a fresh subprocess so memory figures are its
own. Goals (from the core issue): bring-up < 1 s, quickcheck overhead < 5 % of one core,
``import lifekit`` < 150 ms, idle RSS of ``lifekit up`` with 10 resources < 40 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SIZES = {
    # hierarchies, mids per root, leaves per mid  -> resources = h * (1 + m + m * l)
    "full": {"shape": (100, 9, 10), "qc_resources": 1000, "qc_seconds": 10.0, "imports": 15},
    "smoke": {"shape": (10, 3, 3), "qc_resources": 100, "qc_seconds": 1.5, "imports": 3},
}

_WORKER = textwrap.dedent(
    """
    import json, resource, sys, time
    import anyio
    from lifekit import HierarchyInService, Policy, Resource, Result, State, build_model
    from lifekit._registry import KitRegistry
    from lifekit._runtime import Node
    from lifekit.kit import Kit

    class NoopKit(Kit):
        kind = "noop"
        description = "awaits a checkpoint and says ok"

        def __init__(self):
            self.running = set()

        async def restore(self, resource, ctx):
            await anyio.lowlevel.checkpoint()
            self.running.add(resource.tag)
            return Result.ok()

        async def remove(self, resource, ctx):
            await anyio.lowlevel.checkpoint()
            self.running.discard(resource.tag)
            return Result.ok()

        async def quickcheck(self, resource, ctx):
            await anyio.lowlevel.checkpoint()
            return Result.ok() if resource.tag in self.running else Result.not_running()

    def shape_model(hierarchies, mids, leaves, interval):
        policy = Policy(quickcheck_interval=interval)
        resources = []
        for h in range(hierarchies):
            mid_tags = []
            for m in range(mids):
                leaf_tags = [f"h{h}m{m}l{l}" for l in range(leaves)]
                resources += [Resource(t, "noop", policy=policy) for t in leaf_tags]
                mid_tags.append(f"h{h}m{m}")
                resources.append(
                    Resource(mid_tags[-1], "noop", depends_on=leaf_tags, policy=policy)
                )
            resources.append(Resource(f"h{h}", "noop", depends_on=mid_tags, policy=policy))
        return build_model(resources, default_nodes=["bench"])

    async def bring_up(hierarchies, mids, leaves):
        model = shape_model(hierarchies, mids, leaves, 3600.0)
        kit = NoopKit()
        async with Node(model, name="bench", kits=KitRegistry([kit]), state_dir=sys.argv[3],
                        max_concurrent_actions=1024, events_buffer=1_000_000) as node:
            await node.wait_until(
                lambda s: all(r.state is not State.UNKNOWN for r in s.resources.values())
            )
            # Wait on events, not on snapshots: a snapshot of 10,000 resources per change
            # would measure the benchmark, not lifekit.
            with node.events() as events:
                start = time.perf_counter()
                for root in model.hierarchies:
                    node.request_in_service(root)
                pending = set(model.hierarchies)
                async for event in events:
                    if isinstance(event, HierarchyInService):
                        pending.discard(event.root)
                        if not pending:
                            break
                elapsed = time.perf_counter() - start
            assert all(h.state is State.ISP for h in node.snapshot().hierarchies.values())
            count = len(model.resources)
        return {"resources": count, "seconds": elapsed,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    async def quickchecks(count, seconds):
        model = shape_model(count, 0, 0, 1.0)
        kit = NoopKit()
        node = Node(model, name="bench", kits=KitRegistry([kit]), state_dir=sys.argv[3])
        async with node:
            for root in model.hierarchies:
                node.request_in_service(root)
            await node.wait_until(
                lambda s: all(h.state is State.ISP for h in s.hierarchies.values())
            )
            await anyio.sleep(1.5)  # settle into the schedule
            cpu0, wall0 = time.process_time(), time.perf_counter()
            checks0 = node.statistics().actions_finished
            await anyio.sleep(seconds)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            checks = node.statistics().actions_finished - checks0
        return {"resources": count, "cpu_percent": 100 * cpu / wall, "checks": checks,
                "checks_per_s": checks / wall}

    mode, backend = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[4])
    if mode == "bring_up":
        out = anyio.run(bring_up, *args, backend=backend)
    else:
        out = anyio.run(quickchecks, *args, backend=backend)
    print(json.dumps(out))
    """
)


def _python() -> str:
    return sys.executable


def _worker(mode: str, backend: str, args: list[object]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lifekit-bench-") as state:
        result = subprocess.run(
            [_python(), "-c", _WORKER, mode, backend, state, json.dumps(args)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_import(repeats: int) -> dict[str, float]:
    """Median wall time of ``import lifekit`` in a fresh interpreter, minus a bare start."""

    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([_python(), "-c", code], check=True, cwd=ROOT)
        return time.perf_counter() - start

    bare = statistics.median(run("pass") for _ in range(repeats))
    full = statistics.median(run("import lifekit") for _ in range(repeats))
    return {"import_ms": 1000 * (full - bare)}


IDLE_CONFIG = """
config_version = 1
[node]
name = "bench"
state_dir = "{state}"
[defaults]
quickcheck_interval = 10.0
{resources}
"""


def bench_idle_rss(settle: float) -> dict[str, float]:
    """RSS of a `lifekit up` process running 10 supervised `sleep` resources, once idle."""
    resources = "".join(
        f'\n[resources.r{i}]\nkind = "app"\n'
        f'params = {{ mode = "supervised", command = ["sleep", "3600"] }}\n'
        for i in range(10)
    )
    with tempfile.TemporaryDirectory(prefix="lifekit-bench-") as tmp:
        config = Path(tmp) / "idle.toml"
        config.write_text(IDLE_CONFIG.format(state=f"{tmp}/state", resources=resources))
        socket_path = Path(tmp) / "run" / "lifekit.sock"
        lifekit = Path(_python()).parent / "lifekit"
        process = subprocess.Popen(
            [str(lifekit), "up", str(config), "--no-tree", "--socket", str(socket_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 30
            while not socket_path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(settle)
            status = Path(f"/proc/{process.pid}/status").read_text()
            rss_kb = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
            )
            alive = process.poll() is None
        finally:
            process.send_signal(2)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if not alive:
        raise RuntimeError("`lifekit up` exited before it could be measured")
    return {"rss_mb": rss_kb / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    size = SIZES[args.size]
    hierarchies, mids, leaves = size["shape"]  # type: ignore[misc]
    rows: list[tuple[str, str, str, str]] = []
    results: dict[str, object] = {}
    shape = (
        f"{hierarchies} hierarchies x (1 root -> {mids} mids -> {leaves} leaves each), depth 3, "
        "no-op kit awaiting one checkpoint per call, max_concurrent_actions=1024"
    )
    for backend in ("asyncio", "trio"):
        up = _worker("bring_up", backend, [hierarchies, mids, leaves])
        results[f"bring_up_{backend}"] = up
        rows.append(
            (
                f"bring {up['resources']:,.0f} resources in service ({backend})",
                f"{up['seconds']:.3f} s, peak RSS {up['peak_rss_mb']:.0f} MB",
                "< 1 s" if up["resources"] >= 10_000 else "(smoke)",
                "ok" if up["seconds"] < 1.0 else "MISSED",
            )
        )
        qc = _worker("quickchecks", backend, [size["qc_resources"], size["qc_seconds"]])
        results[f"quickchecks_{backend}"] = qc
        rows.append(
            (
                f"quickcheck {qc['resources']:,.0f} resources every 1 s ({backend})",
                f"{qc['cpu_percent']:.2f} % of one core ({qc['checks_per_s']:.0f} checks/s)",
                "< 5 %",
                "ok" if qc["cpu_percent"] < 5.0 else "MISSED",
            )
        )
    imported = bench_import(int(size["imports"]))  # type: ignore[call-overload]
    results["import"] = imported
    rows.append(
        (
            "import lifekit",
            f"{imported['import_ms']:.0f} ms",
            "< 150 ms",
            "ok" if imported["import_ms"] < 150 else "MISSED",
        )
    )
    idle = bench_idle_rss(1.0 if args.size == "smoke" else 5.0)
    results["idle"] = idle
    rows.append(
        (
            "idle RSS of `lifekit up`, 10 resources",
            f"{idle['rss_mb']:.1f} MB",
            "< 40 MB",
            "ok" if idle["rss_mb"] < 40 else "MISSED",
        )
    )
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    print(f"lifekit core benchmarks (size {args.size}; shape: {shape})")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"{'measurement':<{width}}  {'result':<{value_width}}  {'goal':<8}  verdict")
    for name, value, goal, verdict in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {goal:<8}  {verdict}")
    if args.json:
        print(json.dumps(results, indent=2))
    # Never fail on speed: machines are noisy. Benchmarks report; tests assert behaviour.
    return 0


if __name__ == "__main__":
    sys.exit(main())
