"""``lifekit demo``: one app hierarchy, a killed process, local recovery, then escalation.

Everything is real: the two applications are supervised processes started by the ``app`` kit,
the kill is a real SIGKILL, detection is the kit's quickcheck. Runs in a temporary directory
and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import anyio

from lifekit._engine import (
    EngineSnapshot,
    HierarchyFailed,
    QuickcheckFailed,
    RecoveryLimitReached,
    RecoveryStarted,
    ResourceFailed,
    ResourceRecovered,
    StateChanged,
)
from lifekit._model import State
from lifekit._runtime import Node
from lifekit._runtime._logging import configure_logging
from lifekit._runtime._tree import render_event, render_tree

__all__ = ["demo_config", "run_demo"]

_SHOWN = (
    StateChanged,
    QuickcheckFailed,
    RecoveryStarted,
    ResourceRecovered,
    RecoveryLimitReached,
    ResourceFailed,
    HierarchyFailed,
)


def demo_config(interval: float) -> str:
    """The demo's configuration, as TOML (``lifekit check`` accepts it too)."""
    # JSON strings are valid TOML basic strings, escapes included.
    python = json.dumps(sys.executable)
    worker = json.dumps("import time\nwhile True:\n    time.sleep(1)")
    http_args = '"--bind", "127.0.0.1", "0"'
    return f"""
config_version = 1

[node]
name = "demo"

[defaults]
quickcheck_interval = {interval}
recovery_limit = {{ max_recoveries = 2, window = 60.0 }}

[resources.worker]
kind = "app"
params = {{ mode = "supervised", command = [{python}, "-c", {worker}] }}

[resources.web]
kind = "app"
depends_on = ["worker"]
params = {{ mode = "supervised", command = [{python}, "-m", "http.server", {http_args}] }}
"""


def _recovered(count: int) -> Callable[[EngineSnapshot], bool]:
    def check(snapshot: EngineSnapshot) -> bool:
        worker = snapshot.resources["worker"]
        return worker.recent_recoveries == count and worker.state is State.ISP

    return check


async def _catch_up() -> None:
    """Let the event printer print what already happened before the next line."""
    await anyio.sleep(0.1)


def _say(text: str) -> None:
    print(f"\n\x1b[1m== {text}\x1b[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def _worker_pid(state_dir: Path) -> int:
    # The app kit's pidfile: JSON with the pid, its start time and the boot id.
    return int(json.loads((state_dir / "worker.pid").read_text())["pid"])


async def run_demo(fast: bool = False) -> int:
    """Run the demo; return 0 when every step behaved as described, 130 if interrupted.

    Ctrl-C is received as a signal, never as an exception inside the node, so an interrupted
    demo still takes its applications out of service and leaves nothing running.
    """
    result = 130
    async with anyio.create_task_group() as group:

        async def interrupt() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    print("\ninterrupted: taking everything out of service…", flush=True)
                    group.cancel_scope.cancel()

        group.start_soon(interrupt)
        result = await _demo(fast)
        group.cancel_scope.cancel()
    return result


async def _demo(fast: bool) -> int:
    from lifekit._config import parse_config  # noqa: PLC0415 - keeps `import lifekit` light

    configure_logging(level="CRITICAL")  # the demo prints the events itself
    interval = 0.2 if fast else 0.5
    config = parse_config(demo_config(interval), source="<demo>")
    with tempfile.TemporaryDirectory(prefix="lifekit-demo-") as tmp:
        state_dir = Path(tmp)
        async with Node(config.model, name="demo", kits=config.kits, state_dir=state_dir) as node:
            start = anyio.current_time()

            async def show() -> None:
                async for event in node.events():
                    if isinstance(event, _SHOWN):
                        print("   " + render_event(event, since=start), flush=True)

            async with anyio.create_task_group() as group:
                group.start_soon(show)
                _say("1. bring hierarchy 'web' in service: worker first, then web")
                if not await node.bring_in_service("web", timeout=30):
                    print("the hierarchy failed to come in service", file=sys.stderr)
                    group.cancel_scope.cancel()  # stop the event printer, or both wait
                    return 1
                await _catch_up()
                print(render_tree(node.status()), flush=True)
                limit = config.model.resources["worker"].policy.recovery_limit
                for attempt in range(1, limit.max_recoveries + 2):
                    pid = _worker_pid(state_dir)
                    last = attempt > limit.max_recoveries
                    _say(
                        f"{attempt + 1}. kill worker (pid {pid}) with SIGKILL"
                        + ("  — one failure more than the limit allows" if last else "")
                    )
                    killed_at = anyio.current_time()
                    os.kill(pid, signal.SIGKILL)
                    if not last:
                        await node.wait_until(_recovered(attempt), timeout=30)
                        took = anyio.current_time() - killed_at
                        await _catch_up()
                        print(f"   detected and recovered locally in {took:.2f} s", flush=True)
                    else:
                        snapshot = await node.wait_until(
                            lambda s: (
                                s.resources["worker"].state.value == "OSF"
                                and not s.resources["web"].state.in_service
                            ),
                            timeout=30,
                        )
                        took = anyio.current_time() - killed_at
                        await _catch_up()
                        print(
                            f"   escalated after {took:.2f} s: no recover; the hierarchy is "
                            f"out of service — {snapshot.resources['worker'].reason}",
                            flush=True,
                        )
                _say("final state")
                print(render_tree(node.status()), flush=True)
                group.cancel_scope.cancel()
        _say("done: the node took everything out of service and stopped")
    return 0
