"""The real lifekit daemon on a lab node: only it dies, and a new one adopts what it ran."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from lifekit.lab import Lab, LabNode

pytestmark = pytest.mark.root

CONFIG = """
config_version = 1
[node]
name = "n1"
state_dir = "/var/lib/lifekit/state"
run_dir = "/run/lifekit"
on_exit = "leave_running"
power = "lab"
[defaults]
quickcheck_interval = 0.5
[resources.svc]
kind = "app"
params = { mode = "supervised", command = ["sleep", "7001"] }
"""


def svc_state(node: LabNode) -> str | None:
    """The resource's state from ``lifekit status --json`` on the node (None: no daemon)."""
    done = node.run([sys.executable, "-m", "lifekit", "status", "--json"], check=False)
    if done.returncode != 0:
        return None
    document = json.loads(done.stdout)
    states = {
        resource["tag"]: resource["state"]
        for hierarchy in document["hierarchies"]
        for resource in hierarchy["resources"]
    }
    return str(states["svc"])


def test_the_daemon_dies_alone_and_its_successor_adopts_the_service(
    lifekit_lab_factory: Callable[..., Lab],
) -> None:
    lab = lifekit_lab_factory(nodes=("n1",), networks=("public",), client=False, lun_size=0)
    n1 = lab.node("n1")
    (n1.directory / "root" / "etc/lifekit" / "lifekit.toml").write_text(CONFIG)
    up = [sys.executable, "-m", "lifekit", "up", "--no-tree", "/etc/lifekit/lifekit.toml"]
    n1.spawn(up, output=n1.directory / "daemon.log")
    n1.wait_for(lambda: svc_state(n1) == "ISP", timeout=30)
    service = n1.pids("sleep 7001")
    assert len(service) == 1

    killed = n1.kill_process("lifekit up")  # only the daemon
    assert killed
    n1.wait_for(lambda: svc_state(n1) is None, timeout=10)
    assert n1.is_on
    assert n1.pids("sleep 7001") == service  # the service it protected runs on

    n1.spawn(up, output=n1.directory / "daemon.log")
    n1.wait_for(lambda: svc_state(n1) == "ISP", timeout=30)
    assert n1.pids("sleep 7001") == service  # adopted, not restarted
