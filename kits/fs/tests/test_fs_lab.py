"""The fs kit on real mounts in lab nodes: holders, busy and hung unmounts, journal replay,
duplicate mounts, capacity, options, probes against a hung filesystem, fenced remove."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from lifekit_fs import FsKit

from lifekit.kit import Outcome
from lifekit.lab import Lab, LabSpec
from lifekit.testing import run_conformance

pytestmark = [pytest.mark.root, pytest.mark.anyio]

MOUNT_POINT = "/run/fs-test"  # the harness's mount point, in a node's private /run

PLAIN = LabSpec(nodes=("n1", "n2"), networks=("public",), client=False, lun_size=16 << 20)
FENCED = LabSpec(nodes=("n1",), networks=("public",), client=False, lun_size=16 << 20, iscsi=True)


@pytest.fixture
def plain(lifekit_lab_factory: Any) -> Lab:
    lab: Lab = lifekit_lab_factory(PLAIN)
    lab.node("n1").mkfs()
    return lab


@pytest.fixture
def fenced(lifekit_lab_factory: Any) -> Iterator[Lab]:
    lab: Lab = lifekit_lab_factory(FENCED)
    node = lab.node("n1")
    node.mkfs(node.attach_fenced_disk())
    yield lab
    # Whatever the test did: a fenced-path filesystem still mounted when the lab goes down
    # makes nbdfuse's own exit flush it through itself and hang (see the report); unmount it
    # while the path answers.
    node.thaw_storage()
    node.run(["umount", MOUNT_POINT], check=False, timeout=20)


def _params(device: str, **extra: Any) -> dict[str, Any]:
    return {"device": device, "mount_point": MOUNT_POINT, "fstype": "ext4", **extra}


def _state(pid: int) -> str:
    """A process's scheduler state (``D``: uninterruptible, stuck in the kernel)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


async def test_a_holder_is_signalled_and_the_unmount_succeeds(
    plain: Lab, make_harness: Any
) -> None:
    h = make_harness(plain)
    n1 = plain.node("n1")
    data = h.resource(_params(n1.disk, options=["noatime"]))
    first = await h.call("n1", "restore", data)
    assert first.outcome is Outcome.OK, first
    assert "e2fsck" in first.reason
    again = await h.call("n1", "restore", data)
    assert again.outcome is Outcome.OK, again
    assert "already mounted" in again.reason, again
    assert (await h.call("n1", "quickcheck", data)).outcome is Outcome.OK
    holder = n1.spawn(["sh", "-c", f"cd {MOUNT_POINT} && exec sleep 600"])
    n1.wait_for(lambda: bool(n1.pids("sleep 600")))
    removed = await h.call("n1", "remove", data)
    assert removed.outcome is Outcome.OK, removed
    assert "SIGTERM" in removed.reason, removed
    assert "(cwd)" in removed.reason, removed
    assert holder.wait(5) != 0
    assert not h.mounted(n1)
    assert (await h.call("n1", "remove", data)).outcome is Outcome.NOT_RUNNING
    assert (await h.call("n1", "quickcheck", data)).outcome is Outcome.NOT_RUNNING


async def test_a_holder_ignoring_term_gets_kill(plain: Lab, make_harness: Any) -> None:
    h = make_harness(plain)
    n1 = plain.node("n1")
    data = h.resource(_params(n1.disk, holder_delay=0.3))
    assert (await h.call("n1", "restore", data)).outcome is Outcome.OK
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"f = open('{MOUNT_POINT}/held', 'w'); print('ready', flush=True); time.sleep(600)"
    )
    out = h.tmp_path / "stubborn.out"
    holder = n1.spawn([sys.executable, "-c", stubborn], output=out)
    n1.wait_for(lambda: out.exists() and "ready" in out.read_text())
    started = time.monotonic()
    removed = await h.call("n1", "remove", data)
    assert removed.outcome is Outcome.OK, removed
    assert "SIGKILL" in removed.reason, removed
    assert "(fd)" in removed.reason, removed
    assert time.monotonic() - started < 5
    assert holder.wait(5) != 0


async def test_power_loss_then_restore_elsewhere_replays_the_journal(
    plain: Lab, make_harness: Any
) -> None:
    h = make_harness(plain)
    n1, n2 = plain.node("n1"), plain.node("n2")
    data = h.resource(_params("/run/lifekit-lab/disk/lun"))
    assert (await h.call("n1", "restore", data)).outcome is Outcome.OK
    write = (
        f"import os; f = open('{MOUNT_POINT}/acked', 'w'); f.write('acknowledged'); "
        "f.flush(); os.fsync(f.fileno())"
    )
    n1.run([sys.executable, "-c", write])
    n1.power_loss()
    restored = await h.call("n2", "restore", data)
    assert restored.outcome is Outcome.OK, restored
    assert "recovering journal" in restored.reason, restored
    assert n2.run(["cat", f"{MOUNT_POINT}/acked"]).stdout == "acknowledged"


async def test_a_mount_from_another_device_is_a_hard_failure_naming_both(
    plain: Lab, make_harness: Any
) -> None:
    h = make_harness(plain)
    n1 = plain.node("n1")
    n1.run(["mkdir", "-p", MOUNT_POINT])
    n1.run(["mount", "-t", "tmpfs", "squatter", MOUNT_POINT])
    data = h.resource(_params(n1.disk))
    result = await h.call("n1", "restore", data)
    assert result.outcome is Outcome.HARD_FAILURE, result
    assert "squatter" in result.reason, result
    assert n1.disk in result.reason, result
    removed = await h.call("n1", "remove", data)  # never touches what it does not own
    assert removed.outcome is Outcome.NOT_RUNNING, removed
    assert h.mounted(n1), removed


async def test_capacity_thresholds_give_degraded(plain: Lab, make_harness: Any) -> None:
    h = make_harness(plain)
    n1 = plain.node("n1")
    params = {"device": "fsdata", "mount_point": MOUNT_POINT, "fstype": "tmpfs"}
    data = h.resource({**params, "options": ["size=1m"], "capacity_warn": 50})
    assert (await h.call("n1", "restore", data)).outcome is Outcome.OK
    assert (await h.call("n1", "quickcheck", data)).outcome is Outcome.OK
    n1.run(["dd", "if=/dev/zero", f"of={MOUNT_POINT}/fill", "bs=1k", "count=700"])
    warned = await h.call("n1", "quickcheck", data)
    assert warned.outcome is Outcome.DEGRADED, warned
    assert "capacity_warn 50%" in warned.reason, warned
    n1.run(["dd", "if=/dev/zero", f"of={MOUNT_POINT}/fill", "bs=1k", "count=1000"], check=False)
    full = await h.call("n1", "quickcheck", data)
    assert full.outcome is Outcome.DEGRADED, full
    assert "CAPACITY ERROR" in full.reason, full


async def test_lost_options_fail_the_quickcheck_and_recover_remounts(
    plain: Lab, make_harness: Any
) -> None:
    h = make_harness(plain)
    n1 = plain.node("n1")
    data = h.resource(_params(n1.disk, options=["noatime", "nodev"]))
    assert (await h.call("n1", "restore", data)).outcome is Outcome.OK
    n1.run(["mount", "-o", "remount,ro,relatime", MOUNT_POINT])
    failed = await h.call("n1", "quickcheck", data)
    assert failed.outcome is Outcome.SOFT_FAILURE, failed
    assert "noatime" in failed.reason, failed
    assert "rw" in failed.reason, failed
    recovered = await h.call("n1", "recover", data)
    assert recovered.outcome is Outcome.OK, recovered
    assert (await h.call("n1", "quickcheck", data)).outcome is Outcome.OK


async def test_a_write_probe_against_a_hung_filesystem_times_out(
    fenced: Lab, make_harness: Any
) -> None:
    h = make_harness(fenced)
    n1 = fenced.node("n1")
    data = h.resource(_params(n1.fenced_disk, check_depth="write", probe_timeout=1.0))
    assert (await h.call("n1", "restore", data)).outcome is Outcome.OK
    assert (await h.call("n1", "quickcheck", data)).outcome is Outcome.OK
    n1.hang_storage()
    try:
        started = time.monotonic()
        hung = await h.call("n1", "quickcheck", data)
        took = time.monotonic() - started
        assert hung.outcome is Outcome.SOFT_FAILURE, hung
        assert "did not finish within 1 s" in hung.reason, hung
        assert took < 3, took
        n1.run(["true"], timeout=2)  # the node stays responsive
        again = await h.call("n1", "quickcheck", data)  # no pile-up of stuck probes
        assert "still stuck" in again.reason, again
    finally:
        n1.thaw_storage()
    with anyio.fail_after(10):
        # The stuck probe finishes once the storage answers; there is no event to await.
        while (await h.call("n1", "quickcheck", data)).outcome is not Outcome.OK:  # noqa: ASYNC110
            await anyio.sleep(0.1)
    assert (await h.call("n1", "remove", data)).outcome is Outcome.OK


async def test_a_busy_mount_on_hung_storage_never_hangs_the_remove(
    fenced: Lab, make_harness: Any
) -> None:
    h = make_harness(fenced)
    n1 = fenced.node("n1")
    strict = h.resource(_params(n1.fenced_disk, holder_delay=0.3, unmount_timeout=2.0))
    lazy = h.resource(
        _params(n1.fenced_disk, holder_delay=0.3, unmount_timeout=2.0, lazy_unmount=True)
    )
    assert (await h.call("n1", "restore", strict)).outcome is Outcome.OK
    writer = (
        # Rewrites one block: it must keep writing, not fill the small LUN and exit. It says
        # "ready" once it holds an fd: a process stuck in open() itself holds the mount with
        # no fd or cwd to show for it, and no /proc walk can name it.
        f"import os; fd = os.open('{MOUNT_POINT}/log', os.O_WRONLY | os.O_CREAT)\n"
        "os.fsync(fd); print('ready', flush=True)\n"
        "while True:\n    os.pwrite(fd, b'x' * 65536, 0); os.fsync(fd)\n"
    )
    out = h.tmp_path / "writer.out"
    holder = n1.spawn([sys.executable, "-c", writer], output=out)
    n1.wait_for(lambda: out.exists() and "ready" in out.read_text())
    n1.hang_storage()
    try:
        pid = n1.pids("while True")[0]
        n1.wait_for(lambda: _state(pid) == "D", timeout=5)
        started = time.monotonic()
        refused = await h.call("n1", "remove", strict)
        assert refused.outcome is Outcome.HARD_FAILURE, refused
        assert "still held by" in refused.reason
        assert "lazy_unmount is off" in refused.reason
        detached = await h.call("n1", "remove", lazy)
        assert detached.outcome is Outcome.DEGRADED
        assert "LAZY UNMOUNT" in detached.reason
        assert time.monotonic() - started < 15
        assert not h.mounted(n1)
        n1.run(["true"], timeout=2)
    finally:
        n1.thaw_storage()
    assert holder.wait(10) != 0


async def test_the_fenced_remove_completes_on_hung_storage(fenced: Lab, make_harness: Any) -> None:
    h = make_harness(fenced)
    n1 = fenced.node("n1")
    data = h.resource(_params(n1.fenced_disk, holder_delay=0.3))
    assert (await h.call("n1", "restore", data)).outcome is Outcome.OK
    n1.run(["sh", "-c", f"echo unflushed > {MOUNT_POINT}/dirty"])
    n1.hang_storage()
    try:
        started = time.monotonic()
        result = await h.call("n1", "remove_fenced", data)
        assert result.outcome is Outcome.OK, result
        assert "shut" in result.reason, result
        assert "detached" in result.reason, result
        assert time.monotonic() - started < 8
        assert not h.mounted(n1)
    finally:
        n1.thaw_storage()
    assert (await h.call("n1", "remove_fenced", data)).outcome is Outcome.NOT_RUNNING


async def test_the_kit_passes_the_conformance_suite_in_a_lab_node(
    plain: Lab, make_harness: Any
) -> None:
    n1 = plain.node("n1")
    report = await run_conformance(
        FsKit,
        params=_params(n1.disk, fsck="never"),
        missing_params=_params("/dev/lifekit-fs-no-such-disk"),
        host=n1.host(),
        state_dir=make_harness(plain).tmp_path / "conformance",
    )
    assert report.passed, str(report)
