"""The shared LUN: the plain path (a loop device per node) and the fenced path (iSCSI to tgtd)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from lifekit.errors import LabError, ProcessError
from lifekit.lab import Lab, _sys, leftovers

pytestmark = pytest.mark.root

DD = ["dd", "if=/dev/zero", "bs=4096", "count=1", "oflag=direct", "conv=notrunc"]


def test_plain_path_is_one_loop_device_per_node_on_the_same_image(lifekit_lab: Lab) -> None:
    n1, n2 = lifekit_lab.node("n1"), lifekit_lab.node("n2")
    assert n1.disk != n2.disk
    assert _sys.loop_devices()[n1.disk] == str(lifekit_lab.lun_image)
    assert _sys.loop_devices()[n2.disk] == str(lifekit_lab.lun_image)
    assert n1.run(["readlink", "/run/lifekit-lab/disk/lun"]).stdout.strip() == n1.disk
    # What n1 writes through its path, n2 reads through its own.
    n1.run(["sh", "-c", f"printf lifekit-lab | dd of={n1.disk} bs=512 conv=notrunc,fsync"])
    assert n2.run(["head", "-c", "11", n2.disk]).stdout == "lifekit-lab"
    with pytest.raises(LabError, match="no iSCSI target"):
        n1.attach_fenced_disk()


def test_fenced_path_a_preempted_node_can_no_longer_write(
    lifekit_lab_factory: Callable[..., Lab],
) -> None:
    lab = lifekit_lab_factory(nodes=("n1", "n2"), client=False, iscsi=True)
    n1, n2 = lab.node("n1"), lab.node("n2")
    disk1, disk2 = n1.attach_fenced_disk(), n2.attach_fenced_disk()
    assert n1.attach_fenced_disk() == disk1  # attached once
    # Both data sessions registered their node's key; n1 came first and reserved the LUN.
    state = n2.reservation()
    assert sorted(set(state["keys"])) == sorted({n1.scsi_key, n2.scsi_key})
    assert state["holder"] == n1.scsi_key
    assert state["type"] == 5

    n1.run(["mkfs.ext4", "-q", "-F", disk1])
    n1.run(["mkdir", "-p", "/run/lun"])
    n1.run(["mount", disk1, "/run/lun"])
    n1.run(["sh", "-c", "echo before-fence > /run/lun/a && sync"])
    assert n1.run([*DD, f"of={disk1}", "seek=9000"], check=False).returncode == 0

    assert n2.preempt(n1) in ("PREEMPT", "PREEMPT_AND_ABORT")

    state = n2.reservation()
    assert n1.scsi_key not in state["keys"]
    assert state["holder"] == n2.scsi_key
    # n1's writes now fail at the target; n2's succeed.
    denied = n1.run([*DD, f"of={disk1}", "seek=9000"], check=False)
    assert denied.returncode != 0
    assert "Input/output error" in denied.stderr
    assert n2.run([*DD, f"of={disk2}", "seek=9001"], check=False).returncode == 0
    # n1's filesystem cannot commit; n2 replays the journal and finds the data from before.
    n1.power_loss()
    n2.run(["e2fsck", "-p", disk2], check=False)
    n2.run(["mkdir", "-p", "/run/lun"])
    n2.run(["mount", disk2, "/run/lun"])
    assert n2.run(["cat", "/run/lun/a"]).stdout == "before-fence\n"
    n2.run(["umount", "/run/lun"])

    # Power on attaches n1's fenced path again, registering its key (unfencing at join).
    n1.power_on()
    assert n1.fenced_disk
    assert n1.scsi_key in n2.reservation()["keys"]


def test_a_failing_scsi_step_names_itself(lifekit_lab_factory: Callable[..., Lab]) -> None:
    lab = lifekit_lab_factory(nodes=("n1", "n2"), client=False, iscsi=True)
    n1, n2 = lab.node("n1"), lab.node("n2")
    n1.scsi(["register", n1.scsi_key], ["reserve", n1.scsi_key, 5])
    with pytest.raises(ProcessError, match="RESERVATION CONFLICT"):
        n2.scsi(["write", 0])


def test_mkfs_offers_ext4_multi_mount_protection_and_xfs(
    lifekit_lab_factory: Callable[..., Lab],
) -> None:
    # xfs needs at least 300 MB; the image is sparse, so this costs nothing.
    lab = lifekit_lab_factory(nodes=("n1",), client=False, lun_size=320 << 20)
    n1 = lab.node("n1")
    n1.mkfs(mmp=True)
    assert "mmp" in n1.run(["tune2fs", "-l", n1.disk]).stdout.split("features:")[1].split("\n")[0]
    n1.mkfs(fstype="xfs")
    assert n1.run(["blkid", "-o", "value", "-s", "TYPE", n1.disk]).stdout.strip() == "xfs"
    with pytest.raises(LabError, match="ext4 feature"):
        n1.mkfs(fstype="xfs", mmp=True)


def test_a_hung_storage_path_stops_io_but_not_the_node(
    lifekit_lab_factory: Callable[..., Lab],
) -> None:
    lab = lifekit_lab_factory(nodes=("n1",), client=False, iscsi=True)
    n1 = lab.node("n1")
    disk = n1.attach_fenced_disk()
    n1.hang_storage()
    with pytest.raises(ProcessError, match="still running after"):
        n1.run(
            ["dd", f"if={disk}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct"], timeout=1
        )
    assert n1.run(["echo", "responsive"]).stdout == "responsive\n"
    n1.thaw_storage()
    n1.run(["dd", f"if={disk}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct"], timeout=10)


def test_down_with_a_mounted_fenced_path_on_hung_storage_leaves_nothing(
    lifekit_lab_factory: Callable[..., Lab],
) -> None:
    # nbdfuse serves the filesystem mounted on its own node: killed carelessly, the last of
    # the node's processes would unmount it and wait forever for its own flush.
    lab = lifekit_lab_factory(nodes=("n1",), client=False, iscsi=True)
    n1 = lab.node("n1")
    disk = n1.mkfs(n1.attach_fenced_disk())
    n1.run(["mkdir", "-p", "/run/lun"])
    n1.run(["mount", disk, "/run/lun"])
    n1.run(["sh", "-c", "echo dirty > /run/lun/f"])
    n1.hang_storage()
    started = time.monotonic()
    lab.down()
    assert time.monotonic() - started < 15
    assert leftovers([lab.id]) == {}
    assert disk not in _sys.loop_devices()
    assert not any(lab.id in backing for backing in _sys.loop_devices().values())
