"""The lab's storage side against a real tgtd: the libiscsi wrapper, PR fencing, the fenced path.

Each test gets its own tgtd on 127.0.0.1 (free port, private control socket, 64 MiB sparse
LUN). Persistent-reservation behaviour is tgt 1.0.85's (see
``shared/field-notes/scsi-persistent-reservations.md``): no PREEMPT AND ABORT, registrations
bound to the iSCSI session, 2A/03 RESERVATIONS PREEMPTED for the victim.

Needs root, tgt, libiscsi7; the data-path test also needs nbdkit + its python plugin, nbdfuse,
fuse3, loop devices and e2fsprogs. Without them the tests skip, except under ``CI``, where a
missing tool is a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifekit.lab import _iscsi, _tgt
from lifekit.lab._iscsi import (
    IscsiConnectionError,
    IscsiSession,
    PrOutAction,
    Reservation,
    ReservationType,
    ScsiError,
    ScsiStatus,
    SenseKey,
)

pytestmark = pytest.mark.root

IQN = "iqn.2024-01.lab.lifekit"
TARGET = f"{IQN}:lkiscsi-shared"
LUN_BYTES = 64 * 1024 * 1024
WE_RO = ReservationType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY
# Sessions time out quickly: a hung tgtd should fail a test, not reach the 120 s limit.
TIMEOUT = 3.0


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI, where every system test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: system tests must not skip)")
    pytest.skip(reason)


def _require(*tools: str) -> None:
    if os.geteuid() != 0:
        _unavailable("needs root")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        _unavailable(f"missing {', '.join(missing)}: apt-get install tgt nbdkit ... (see doctor)")
    try:
        _iscsi.load_libiscsi()
    except _iscsi.LibiscsiMissing as exc:
        _unavailable(str(exc))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_gone(pid: int, *, timeout: float = 5.0) -> None:
    """Wait until *pid* is a zombie or gone (PID 1 here never reaps orphans)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return
        if stat.rpartition(")")[2].split()[0] in {"Z", "X"}:
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} still alive {timeout} s after SIGKILL")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


@dataclass
class Tgt:
    """A running private tgtd with one target and one LUN."""

    portal: str
    env: dict[str, str]
    backing_store: Path
    pid: int
    start_seconds: float

    def session(self, name: str) -> IscsiSession:
        """A new session (a new I_T nexus) with initiator ``<IQN>:lkiscsi-<name>``."""
        return IscsiSession(self.portal, TARGET, initiator=f"{IQN}:lkiscsi-{name}", timeout=TIMEOUT)


def _run(argv: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture
def tgt(tmp_path: Path) -> Iterator[Tgt]:
    """tgtd on 127.0.0.1:<free port>, control socket and 64 MiB sparse LUN under tmp_path."""
    _require("tgtd", "tgtadm")
    # sun_path holds 108 bytes and tgtd appends ".0.lock": fall back to a short directory.
    sockdir = tmp_path
    if len(str(tmp_path / "tgtd.sock.0.lock")) > 100:
        sockdir = Path(tempfile.mkdtemp(prefix="lkiscsi-"))
    env = {**os.environ, **_tgt.tgt_env(sockdir / "tgtd.sock")}
    backing = tmp_path / "lkiscsi-lun.img"
    with backing.open("wb") as image:
        image.truncate(LUN_BYTES)
    portal = f"127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    with (tmp_path / "tgtd.log").open("wb") as log:
        tgtd = subprocess.Popen(
            _tgt.tgtd_argv(portal), env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _tgt.wait_ready(lambda argv: _run(argv, env).returncode)
        for argv in _tgt.setup_argvs(tid=1, target_name=TARGET, backing_store=backing):
            done = _run(argv, env)
            assert done.returncode == 0, f"{argv}: {done.stderr}"
        yield Tgt(portal, env, backing, tgtd.pid, time.perf_counter() - started)
    finally:
        for argv in _tgt.teardown_argvs(tid=1):
            _run(argv, env)
        _kill(tgtd.pid)  # tgtd ignores SIGTERM
        tgtd.wait(timeout=5)
        _wait_gone(tgtd.pid)
        if sockdir != tmp_path:
            shutil.rmtree(sockdir, ignore_errors=True)


def test_struct_scsi_task_matches_header() -> None:
    # offsetof() values from /usr/include/iscsi/scsi-lowlevel.h (libiscsi-dev 1.19.0).
    task = _iscsi.ScsiTask
    assert ctypes.sizeof(task) == 176
    assert task.status.offset == 0
    assert task.sense.offset + _iscsi._ScsiSense.key.offset == 52
    assert task.sense.offset + _iscsi._ScsiSense.ascq.offset == 56
    assert task.datain.offset + _iscsi._ScsiData.size.offset == 64
    assert task.datain.offset + _iscsi._ScsiData.data.offset == 72


def test_write_read_round_trip(tgt: Tgt) -> None:
    print(f"tgtd start + target setup: {tgt.start_seconds * 1e3:.1f} ms")
    with tgt.session("rw") as session:
        assert (session.block_size, session.blocks) == (512, LUN_BYTES // 512)
        session.test_unit_ready()
        data = bytes(range(256)) * 4
        session.write(7, data)
        session.flush()
        assert session.read(7, 2) == data
        assert session.read(6, 1) == bytes(512)
        with pytest.raises(ValueError, match="multiple of the block size 512"):
            session.write(0, b"x" * 100)
    assert session.closed
    with tgt.backing_store.open("rb") as image:  # tgt's rdwr store writes the file itself
        image.seek(7 * 512)
        assert image.read(1024) == data


def test_unregistered_writer_conflicts_under_type5(tgt: Tgt) -> None:
    with tgt.session("node-a") as a, tgt.session("node-c") as c:
        a.register(0xA)
        a.reserve(0xA, WE_RO)
        a.write(0, b"a" * 512)
        with pytest.raises(ScsiError) as caught:
            c.write(3, b"c" * 512)
        error = caught.value
        assert error.is_reservation_conflict
        assert error.status is ScsiStatus.RESERVATION_CONFLICT
        assert (error.op, error.errno) == ("WRITE16 lba 3", errno.EIO)
        assert str(error).startswith("WRITE16 lba 3: RESERVATION CONFLICT")
        assert c.read(0, 1) == b"a" * 512  # type 5 blocks writes only


def test_preempt_fences_the_victim(tgt: Tgt) -> None:
    with tgt.session("node-a") as a, tgt.session("node-b") as b:
        a.register(0xA)
        a.reserve(0xA, WE_RO)
        b.register(0xB)
        b.write(1, b"b" * 512)  # a registrant may write under type 5
        generation, keys = b.read_keys()
        assert sorted(keys) == [0xA, 0xB]
        started = time.perf_counter()
        used = b.preempt(0xB, 0xA, WE_RO)
        print(
            f"PREEMPT (+ refused PREEMPT AND ABORT): {(time.perf_counter() - started) * 1e6:.0f} us"
        )
        assert used is PrOutAction.PREEMPT
        assert b.preempt_and_abort_unsupported  # tgt: ILLEGAL REQUEST, fell back
        assert b.read_keys() == (generation + 1, [0xB])
        assert b.read_reservation() == Reservation(generation + 1, 0xB, WE_RO)
        with pytest.raises(ScsiError) as caught:
            a.write(0, b"a" * 512)
        assert caught.value.is_reservation_conflict
        assert (0x2A, 0x03) in a.unit_attentions  # RESERVATIONS PREEMPTED, absorbed
        b.write(0, b"b" * 512)
        assert a.read(0, 1) == b"b" * 512
        # A second preempt skips the unsupported PREEMPT AND ABORT.
        a.register(0xA)
        assert b.preempt(0xB, 0xA, WE_RO) is PrOutAction.PREEMPT


def test_read_keys_and_reservation(tgt: Tgt) -> None:
    with tgt.session("node-a") as a, tgt.session("node-b") as b:
        assert a.read_keys() == (0, [])
        assert a.read_reservation() == Reservation(0, None, None)
        a.register(0xA)
        b.register(0xB, ignore_existing=False)
        with pytest.raises(ScsiError, match="REGISTER key 0xb: RESERVATION CONFLICT"):
            b.register(0xB, ignore_existing=False)  # plain REGISTER needs an unregistered nexus
        assert b.read_keys() == (2, [0xA, 0xB])
        a.reserve(0xA, ReservationType.EXCLUSIVE_ACCESS)
        assert b.read_reservation() == Reservation(2, 0xA, ReservationType.EXCLUSIVE_ACCESS)
        with pytest.raises(ScsiError, match="READ16 lba 0 blocks 1: RESERVATION CONFLICT"):
            b.read(0, 1)
        a.release(0xA, ReservationType.EXCLUSIVE_ACCESS)
        assert b.read_reservation() == Reservation(2, None, None)
        b.unregister(0xB)
        assert a.read_keys() == (3, [0xA])
        a.clear(0xA)
        assert b.read_keys() == (4, [])
        started = time.perf_counter()
        rounds = 200
        for _ in range(rounds):
            a.read_keys()
        print(f"PR round trip (READ KEYS): {(time.perf_counter() - started) / rounds * 1e6:.0f} us")


def test_bad_portal_names_it(tgt: Tgt) -> None:
    port = _free_port()
    with pytest.raises(IscsiConnectionError) as caught:
        IscsiSession(f"127.0.0.1:{port}", TARGET, initiator=f"{IQN}:lkiscsi-x", timeout=TIMEOUT)
    assert caught.value.portal == f"127.0.0.1:{port}"
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert TARGET in str(caught.value)
    assert "Connection refused" in str(caught.value)
    with pytest.raises(IscsiConnectionError, match="Target not found"):
        IscsiSession(tgt.portal, f"{IQN}:lkiscsi-nosuch", initiator=f"{IQN}:lkiscsi-x")


def test_silent_portal_times_out() -> None:
    _require()
    with socket.socket() as silent:  # accepts TCP connections, never answers a login
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        portal = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(_iscsi.IscsiTimeout, match=portal):
            IscsiSession(portal, TARGET, initiator=f"{IQN}:lkiscsi-x", timeout=0.5)
        assert time.monotonic() - started < 3  # rounded up to libiscsi's whole seconds


def test_scsi_error_message() -> None:
    error = ScsiError(
        "PR OUT PREEMPT AND ABORT key 0xb victim 0xa type WRITE_EXCLUSIVE",
        ScsiStatus.CHECK_CONDITION,
        sense_key=SenseKey.ILLEGAL_REQUEST,
        asc=0x24,
        ascq=0x00,
        description="INVALID_FIELD_IN_CDB",
    )
    assert str(error) == (
        "PR OUT PREEMPT AND ABORT key 0xb victim 0xa type WRITE_EXCLUSIVE: CHECK CONDITION,"
        " sense key ILLEGAL REQUEST, asc/ascq 0x24/0x00 (INVALID_FIELD_IN_CDB)"
    )
    assert isinstance(error, OSError)
    assert error.is_illegal_request
    assert not error.is_reservation_conflict


# --- the fenced data path: ext4 -> loop -> nbdfuse -> nbdkit python -> libiscsi -> tgtd -------


@dataclass
class FencedPath:
    """One node's block device through its own iSCSI session."""

    nbdfuse: subprocess.Popen[bytes]
    nbdkit_pids: list[int]
    mountpoint: Path
    loop: str
    attach_seconds: float


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {done.returncode}: {done.stderr.strip()}")
    return done


def _attach(tgt: Tgt, tmp_path: Path, node: str, key: int, paths: list[FencedPath]) -> FencedPath:
    mountpoint = tmp_path / f"lkiscsi-fuse-{node}"
    mountpoint.mkdir()
    pidfile = tmp_path / f"lkiscsi-nbdfuse-{node}.pid"
    argv = _tgt.fenced_path_argv(
        fuse_file=mountpoint / "disk",
        pidfile=pidfile,
        portal=tgt.portal,
        target=TARGET,
        initiator=f"{IQN}:lkiscsi-{node}-data",
        key=key,
    )
    log = tmp_path / f"lkiscsi-nbdfuse-{node}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        nbdfuse = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    path = FencedPath(nbdfuse, [], mountpoint, "", 0.0)
    paths.append(path)
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        if nbdfuse.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"nbdfuse for {node} did not start: {log.read_text()}")
        time.sleep(0.005)
    path.nbdkit_pids = _children(nbdfuse.pid)
    path.loop = _sh(*_tgt.loop_attach_argv(mountpoint / "disk")).stdout.strip()
    path.attach_seconds = time.perf_counter() - started
    return path


def _detach(path: FencedPath) -> None:
    if path.loop:
        _sh("losetup", "-d", path.loop, check=False)
    _sh("fusermount3", "-u", str(path.mountpoint), check=False)
    for pid in [path.nbdfuse.pid, *path.nbdkit_pids]:
        _kill(pid)
    path.nbdfuse.wait(timeout=5)
    for pid in path.nbdkit_pids:
        _wait_gone(pid)


def test_fenced_path_end_to_end(tgt: Tgt, tmp_path: Path) -> None:
    _require("nbdkit", "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "fsck.ext4", "mount")
    if not Path("/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-python-plugin.so").exists():
        _unavailable("missing nbdkit's python plugin: apt-get install nbdkit-plugin-python")
    paths: list[FencedPath] = []
    mounts: list[Path] = []
    try:
        node_a = _attach(tgt, tmp_path, "node-a", 0xA, paths)  # first to join: reserves type 5
        node_b = _attach(tgt, tmp_path, "node-b", 0xB, paths)
        print(f"fenced path attach (nbdfuse start .. loop usable): {node_a.attach_seconds:.3f} s")
        with tgt.session("observer") as observer:
            assert observer.read_reservation().key == 0xA
            assert sorted(observer.read_keys()[1]) == [0xA, 0xB]
        # B reads first (as blkid would): no cache may hide A's later writes from it.
        _sh("dd", f"if={node_b.loop}", "of=/dev/null", "bs=1M", "count=4")

        _sh("mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-L", "lkiscsi", node_a.loop)
        mnt_a = tmp_path / "lkiscsi-mnt-a"
        mnt_a.mkdir()
        _sh("mount", "-t", "ext4", node_a.loop, str(mnt_a))
        mounts.append(mnt_a)
        payload = b"written by node A before the fence\n"
        fd = os.open(mnt_a / "before-fence.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

        with tgt.session("node-b-ctl") as control:  # B's cluster daemon fences A
            control.register(0xB)
            control.preempt(0xB, 0xA, WE_RO)
            assert control.read_keys()[1] == [0xB, 0xB]  # B's data and control sessions
            assert control.read_reservation().key == 0xB

        dd = _sh(
            "dd",
            "if=/dev/zero",
            f"of={node_a.loop}",
            "bs=4096",
            "count=1",
            "seek=100",
            "oflag=direct",
            check=False,
        )
        assert dd.returncode != 0, dd.stderr
        assert "Input/output error" in dd.stderr
        _sh("umount", str(mnt_a), check=False)  # may fail to write its journal: it is fenced
        mounts.remove(mnt_a)

        fsck = _sh("fsck.ext4", "-p", node_b.loop, check=False)
        assert fsck.returncode in {0, 1}, fsck.stdout + fsck.stderr  # 1: errors corrected
        mnt_b = tmp_path / "lkiscsi-mnt-b"
        mnt_b.mkdir()
        _sh("mount", "-t", "ext4", node_b.loop, str(mnt_b))
        mounts.append(mnt_b)
        assert (mnt_b / "before-fence.txt").read_bytes() == payload
        (mnt_b / "after-takeover.txt").write_bytes(b"node B\n")
    finally:
        for mountpoint in reversed(mounts):
            _sh("umount", str(mountpoint), check=False)
        for path in reversed(paths):
            _detach(path)
