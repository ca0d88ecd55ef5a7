"""Node faults: power loss (processes, links, a crashed ext4), one process's death, hang."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lifekit.errors import LabError
from lifekit.lab import Lab, LabNode, _sys

pytestmark = pytest.mark.root

COUNTER = 'i=0; while :; do i=$((i+1)); echo $i > "$0"; sleep 0.01; done'


def sleeps(node: LabNode) -> list[int]:
    return [pid for pid in node.pids("sleep 300") if _sys.comm(pid) == "sleep"]


def test_power_loss_kills_every_process_including_double_forked_ones(lifekit_lab: Lab) -> None:
    n1, n2 = lifekit_lab.node("n1"), lifekit_lab.node("n2")
    n1.spawn(["sleep", "3001"])
    # A daemon: it forks, its parent exits, it re-parents to the node's PID 1.
    n1.run(["sh", "-c", "setsid sh -c 'sleep 3002 & sleep 3003' > /dev/null 2>&1 &"])
    n1.wait_for(lambda: len(sleeps(n1)) == 3)
    victims = n1.pids()
    survivor = n2.spawn(["sleep", "3004"])

    n1.power_loss()

    assert n1.power == "off"
    assert not any(_sys.alive(pid) for pid in victims)
    assert _sys.cgroup_all_procs(n1.cgroup) == [] or not any(
        _sys.alive(pid) for pid in _sys.cgroup_all_procs(n1.cgroup)
    )
    assert n1.netns not in _sys.netns_list()
    with pytest.raises(LabError, match="powered off"):
        n1.run(["true"])
    # Nothing else was touched.
    assert survivor.running()
    assert n2.is_on

    # Power on: a fresh node, same addresses and persistent directories, new /run.
    (n1.directory / "root" / "var/lib/lifekit" / "kept").write_text("disk state")
    n1.power_on()
    assert n1.run(["cat", "/var/lib/lifekit/kept"]).stdout == "disk state"
    assert n1.run(["ls", "/run/lifekit-lab"]).stdout.split() == ["bmc", "disk"]
    assert n1.pids() == []
    assert lifekit_lab.client.run(["ping", "-c1", "-W2", n1.address("public")]).returncode == 0


def test_power_loss_with_ext4_in_flight_leaves_a_journal_to_replay(lifekit_lab: Lab) -> None:
    n1, n2 = lifekit_lab.node("n1"), lifekit_lab.node("n2")
    n1.run(["mkfs.ext4", "-q", "-F", n1.disk])
    n1.run(["mkdir", "-p", "/run/lun"])
    n1.run(["mount", n1.disk, "/run/lun"])
    # Data fsync'd before the power loss must survive it.
    n1.run(
        [
            "python3",
            "-c",
            "import os\n"
            "fd = os.open('/run/lun/committed', os.O_WRONLY | os.O_CREAT, 0o644)\n"
            "os.write(fd, b'acknowledged ' * 1000)\n"
            "os.fsync(fd)\n"
            "d = os.open('/run/lun', os.O_RDONLY)\n"
            "os.fsync(d)\n",
        ]
    )
    # Writes in flight: files created and appended without fsync, as fast as it can.
    n1.spawn(
        [
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i >> /run/lun/inflight.$((i % 50)); done",
        ]
    )
    n1.wait_for(lambda: n1.path("/run/lun/inflight.49").exists())
    time.sleep(0.2)

    n1.power_loss()

    fsck = n2.run(["e2fsck", "-p", n2.disk], check=False)
    assert "recovering journal" in fsck.stdout + fsck.stderr
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
    clean = n2.run(["e2fsck", "-f", "-n", n2.disk], check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    n2.run(["mkdir", "-p", "/run/lun"])
    n2.run(["mount", n2.disk, "/run/lun"])
    assert n2.run(["cat", "/run/lun/committed"]).stdout == "acknowledged " * 1000
    n2.run(["umount", "/run/lun"])


def test_the_death_of_one_named_process(lifekit_lab: Lab) -> None:
    n1 = lifekit_lab.node("n1")
    daemon = n1.spawn(["sleep", "4001"])
    other = n1.spawn(["sleep", "4002"])
    n1.wait_for(lambda: len(n1.pids("sleep 400")) == 2)
    killed = n1.kill_process("sleep 4001")
    assert len(killed) == 1
    assert daemon.wait(5) != 0
    assert other.running()
    assert n1.is_on
    with pytest.raises(LabError, match="no process on node 'n1' has 'nonesuch'"):
        n1.kill_process("nonesuch")


def test_hang_freezes_every_process_and_thaw_resumes(lifekit_lab: Lab) -> None:
    n1, n2 = lifekit_lab.node("n1"), lifekit_lab.node("n2")
    n1.spawn(["sh", "-c", COUNTER, "/run/a"])
    n1.run(["sh", "-c", f"setsid sh -c '{COUNTER}' /run/b > /dev/null 2>&1 &"])
    n2.spawn(["sh", "-c", COUNTER, "/run/c"])
    counters = [n1.path("/run/a"), n1.path("/run/b"), n2.path("/run/c")]
    n1.wait_for(lambda: all(path.exists() and path.read_text() for path in counters))

    def values() -> list[int]:
        return [int(path.read_text() or 0) for path in counters]

    n1.hang()
    assert n1.frozen
    assert _sys.cgroup_frozen(n1.cgroup / "procs")
    first = values()
    time.sleep(0.3)
    second = values()
    assert second[:2] == first[:2]  # both of n1's processes stand still
    assert second[2] > first[2]  # n2 goes on

    n1.thaw()
    assert not n1.frozen
    n1.wait_for(lambda: values()[0] > second[0] and values()[1] > second[1])


def test_a_hung_node_can_still_lose_power(lifekit_lab_factory: Callable[..., Lab]) -> None:
    lab = lifekit_lab_factory(nodes=("n1",), client=False)
    n1 = lab.node("n1")
    n1.spawn(["sleep", "5001"])
    n1.wait_for(lambda: bool(n1.pids("sleep 5001")))
    n1.hang()
    n1.power_loss()
    assert n1.power == "off"
    n1.power_on()
    assert not n1.frozen
    assert n1.run(["echo", "alive"]).stdout == "alive\n"
