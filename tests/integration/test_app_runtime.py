"""Real processes through the app kit and the runtime, on asyncio and trio.

Kill the application: detected and recovered locally within a few quickcheck intervals. Past
the temporal limit: no further attempt, and the hierarchy is OSF with the reason.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest

from lifekit import Node, RecoveryStarted, State, parse_config
from tests.fixtures.support import alive

pytestmark = pytest.mark.anyio

INTERVAL = 0.2

CONFIG = f"""
config_version = 1
[node]
name = "t1"
[defaults]
quickcheck_interval = {INTERVAL}
recovery_limit = {{ max_recoveries = 2, window = 60.0 }}
[resources.worker]
kind = "app"
params = {{ mode = "supervised", command = ["sleep", "600"] }}
[resources.front]
kind = "app"
depends_on = ["worker"]
params = {{ mode = "supervised", command = ["sleep", "601"] }}
"""


def _pid(state: Path, tag: str) -> int:
    return int(json.loads((state / f"{tag}.pid").read_text())["pid"])


async def test_kill_recover_then_escalate(tmp_path: Path) -> None:
    config = parse_config(CONFIG, source="<test>")
    started: list[int] = []
    try:
        async with Node(config.model, name="t1", kits=config.kits, state_dir=tmp_path) as node:
            with node.events() as events:
                assert await node.bring_in_service("front", timeout=20)
                for attempt in (1, 2):
                    pid = _pid(tmp_path, "worker")
                    started.append(pid)
                    killed_at = anyio.current_time()
                    os.kill(pid, signal.SIGKILL)
                    snapshot = await node.wait_until(
                        lambda s, n=attempt: (
                            s.resources["worker"].recent_recoveries == n
                            and s.resources["worker"].state is State.ISP
                        ),
                        timeout=20,
                    )
                    # Functional bound with generous slack: within 5 quickcheck intervals
                    # plus the restart itself.
                    assert anyio.current_time() - killed_at < 5 * INTERVAL + 2.0
                    assert alive(_pid(tmp_path, "worker"))
                    assert snapshot.resources["front"].state is State.ISP
                front_pid = _pid(tmp_path, "front")
                started += [_pid(tmp_path, "worker"), front_pid]
                os.kill(_pid(tmp_path, "worker"), signal.SIGKILL)
                snapshot = await node.wait_until(
                    lambda s: (
                        s.resources["worker"].state is State.OSF
                        and s.resources["front"].state is State.OSU
                        and s.actions_in_flight == 0
                    ),
                    timeout=20,
                )
                reason = snapshot.resources["worker"].reason
                assert "recovery limit reached (2 recoveries within 60 s)" in reason
                assert snapshot.hierarchies["front"].state is State.OSF
                assert not alive(front_pid), "escalation left the parent running"
                # No further attempt: nothing restarts it, however long we wait.
                await anyio.sleep(5 * INTERVAL)
                assert node.snapshot().resources["worker"].state is State.OSF
                assert not (tmp_path / "worker.pid").exists() or not alive(_pid(tmp_path, "worker"))
                recoveries = []
                while True:
                    try:
                        event = events.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    if isinstance(event, RecoveryStarted):
                        recoveries.append(event)
                assert [event.attempt for event in recoveries] == [1, 2]
    finally:
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
