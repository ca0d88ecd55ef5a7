"""One node of a lab: run commands and processes on it, and the faults a server can suffer.

A node is a network namespace, a persistent private mount namespace, a UTS namespace (its own
hostname) and a PID namespace whose PID 1 is :mod:`lifekit.lab._init`, all held by that one
process, plus a cgroup. A command runs "on" the node by joining its cgroup and then its
namespaces (``nsenter``), so it sees the node's interfaces, mounts, hostname and processes,
and dies with the node.

The node's cgroup ``lklab-<lab>/<node>`` has two leaves: ``procs`` for everything that runs on
the node and ``hba`` for the processes that make up its fenced storage path (nbdfuse, nbdkit:
in a real server, its HBA and multipath stack). Power loss freezes ``procs`` first, shuts the
shared filesystems down while ``hba`` can still carry the last journal write, then kills both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifekit._runner import ProcessResult, SpawnedProcess, run_process, spawn_process
from lifekit.errors import LabError, ProcessError
from lifekit.lab import _sys

if TYPE_CHECKING:
    import logging

    from lifekit.lab._lab import Lab

__all__ = ["LabHost", "LabNode", "LabProcess"]

#: Processes the lab itself puts on a node; they are never "the node's processes".
_PLUMBING = frozenset({"nsenter", "unshare"})

#: Seconds a killed command gets to exit before it is abandoned as stuck in the kernel.
_KILL_GRACE = 2.0

#: Spawned processes not yet reaped (a Popen dropped while its process runs would warn).
_children: list[subprocess.Popen[bytes]] = []


def reap_children() -> None:
    """Forget spawned processes that have ended (reaping them)."""
    _children[:] = [child for child in _children if child.poll() is None]


class LabProcess:
    """A long-lived process started on a node with :meth:`LabNode.spawn`.

    :attr:`pid` is the ``nsenter`` that started it (in this machine's PID numbering), which
    lives exactly as long as the process and passes on its exit status; both are in their own
    process group, which :meth:`kill` signals.
    """

    def __init__(self, popen: subprocess.Popen[bytes], node: LabNode) -> None:
        self._popen = popen
        self.node = node
        _children.append(popen)

    def __repr__(self) -> str:
        return f"<LabProcess on {self.node.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        """The PID of the ``nsenter`` wrapper (also the process group)."""
        return self._popen.pid

    @property
    def node_pid(self) -> int | None:
        """The PID, in this machine's numbering, of the command itself (``None`` once gone)."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            return None
        return int(children[0]) if children else None

    @property
    def returncode(self) -> int | None:
        """The exit status once it has ended (negative: killed by that signal), else ``None``."""
        return self._popen.poll()

    def running(self) -> bool:
        """Whether it still runs."""
        return self._popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to end and return its exit status.

        :raises subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        return self._popen.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal its whole process group (a no-op once it has ended)."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, *, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit status."""
        self.kill(signal.SIGTERM)
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            return self._popen.wait()


class LabHost:
    """A :class:`lifekit.kit.Host` whose commands run on a lab node.

    Give it to :func:`lifekit.testing.run_conformance` (or a kit's ``NodeContext``) to run a
    kit's actions inside the node; cancellation and timeouts kill the whole process group, as
    on :class:`~lifekit.kit.LocalHost`.
    """

    def __init__(self, node: LabNode) -> None:
        self._node = node
        self.name = node.name

    def __repr__(self) -> str:
        return f"<LabHost {self.name}>"

    def _check_startable(
        self, argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | Path | None
    ) -> None:
        # As on LocalHost, a program that cannot start raises ProcessError(returncode=None)
        # instead of looking like a program that ran and failed (nsenter would exit 127).
        if isinstance(argv, str) or not argv:
            return  # the runner rejects these with its own message
        path = (env or {}).get("PATH", os.environ.get("PATH", os.defpath))
        if self._node.which(argv[0], path=path) is None:
            raise ProcessError(
                argv, None, reason=f"cannot start on node {self.name}: No such file or directory"
            )
        if cwd is not None and not self._node.path(cwd).is_dir():
            raise ProcessError(
                argv, None, reason=f"cannot start on node {self.name}: no directory {str(cwd)!r}"
            )

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float | None = None,
        input: bytes | None = None,
        max_output: int = 65536,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> ProcessResult:
        """Run a command on the node to completion (see :meth:`lifekit.kit.Host.run`)."""
        self._check_startable(argv, env, cwd)
        return await run_process(
            self._node.exec_argv(argv, cwd=cwd),
            env=env,
            timeout=timeout,
            input=input,
            max_output=max_output,
            log=log,
        )

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        output: str | Path | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> SpawnedProcess:
        """Start a long-lived process on the node (see :meth:`lifekit.kit.Host.spawn`)."""
        self._check_startable(argv, env, cwd)
        return await spawn_process(
            self._node.exec_argv(argv, cwd=cwd), env=env, output=output, log=log
        )


class LabNode:
    """A node of a lab. Get one with ``lab.node("n1")`` (or ``lab.client``, ``lab.storage``).

    :attr:`name`, :attr:`networks` and :attr:`host_number` describe it; addresses come from
    :meth:`address`. Commands run with :meth:`run` and :meth:`spawn`; faults are
    :meth:`power_loss`, :meth:`kill_process`, :meth:`hang` / :meth:`thaw` and
    :meth:`power_on` / :meth:`restart`.
    """

    def __init__(self, lab: Lab, name: str, networks: Sequence[str], host_number: int) -> None:
        self.lab = lab
        self.name = name
        self.networks = tuple(networks)
        self.host_number = host_number

    def __repr__(self) -> str:
        return f"<LabNode {self.name} of lab {self.lab.name}>"

    # --- identity ----------------------------------------------------------------------------

    @property
    def netns(self) -> str:
        """The name of its network namespace (``ip -n <netns> ...``)."""
        return f"{self.lab.id}-{self.name}"

    @property
    def cgroup(self) -> Path:
        """Its cgroup (``procs`` and ``hba`` below it)."""
        return self.lab.cgroup / self.name

    @property
    def directory(self) -> Path:
        """Its persistent directory on this machine (private dirs, sockets, logs)."""
        return self.lab.directory / "nodes" / self.name

    def address(self, network: str, version: int = 4) -> str:
        """Its address on ``network`` (IPv4 by default, or 6), without a prefix length."""
        if network not in self.networks:
            raise LabError(
                f"node {self.name!r} is not on network {network!r}; it is on {list(self.networks)}"
            )
        return self.lab.spec.address(network, self.host_number, version)

    @property
    def scsi_key(self) -> int:
        """Its SCSI-3 persistent reservation key on the lab's LUN (fenced path)."""
        return 0x6C6B0000 + self.host_number

    @property
    def iqn(self) -> str:
        """Its iSCSI initiator name."""
        return f"iqn.2026-11.lab.lifekit:{self.lab.name}.{self.name}"

    # --- state -------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        node: dict[str, Any] = self.lab._read()["nodes"][self.name]
        return node

    @property
    def power(self) -> str:
        """``"on"`` or ``"off"``."""
        return str(self._state()["power"])

    @property
    def is_on(self) -> bool:
        """Whether it is powered on (a hung node is on)."""
        return self.power == "on"

    @property
    def frozen(self) -> bool:
        """Whether it is hung (:meth:`hang`)."""
        return bool(self._state().get("frozen"))

    def init_pid(self) -> int:
        """The PID of its PID 1, in this machine's numbering.

        :raises LabError: it is powered off (or its PID 1 died, which powers it off).
        """
        state = self._state()
        init = state.get("init")
        if state["power"] != "on" or not init or not _sys.alive(init[0], init[1]):
            raise LabError(
                f"node {self.name!r} of lab {self.lab.name!r} is powered off; "
                f"power it on with lab.node({self.name!r}).power_on()"
            )
        return int(init[0])

    def path(self, path: str | Path) -> Path:
        """Where a path inside the node is, seen from this machine (``/proc/<init>/root/...``).

        Reading and writing through it reaches the node's private mounts (its ``/run``, its
        shared filesystem) without starting a process.
        """
        return Path(f"/proc/{self.init_pid()}/root") / str(path).lstrip("/")

    def mkfs(self, device: str | None = None, *, fstype: str = "ext4", mmp: bool = False) -> str:
        """Make a filesystem on ``device`` (default: this node's plain path to the LUN).

        :param fstype: ``ext4`` or ``xfs`` (xfs needs a LUN of at least 300 MiB).
        :param mmp: ext4 multi-mount protection: a second node's mount is refused while one
            has it mounted. Off by default: it adds 11 s or more to every fsck and mount.
        :returns: the device.
        """
        target = device or self.disk
        if fstype == "ext4":
            argv = ["mkfs.ext4", "-q", "-F"]
            if mmp:
                argv += ["-O", "mmp", "-E", "mmp_update_interval=1"]
        elif fstype == "xfs":
            if mmp:
                raise LabError("multi-mount protection (mmp) is an ext4 feature; xfs has none")
            argv = ["mkfs.xfs", "-q", "-f"]
        else:
            raise LabError(f"unsupported filesystem type {fstype!r}; use 'ext4' or 'xfs'")
        self.run([*argv, target])
        return target

    def which(self, program: str, *, path: str | None = None) -> str | None:
        """Where ``program`` is on the node (searching ``path``, default this process's
        ``PATH``), or ``None`` if it is not there or not executable."""
        if "/" in program:
            candidates = [program]
        else:
            search = path if path is not None else os.environ.get("PATH", os.defpath)
            candidates = [f"{directory}/{program}" for directory in search.split(":") if directory]
        for candidate in candidates:
            inside = self.path(candidate)
            if inside.is_file() and os.access(inside, os.X_OK):
                return candidate
        return None

    @property
    def disk(self) -> str:
        """Its plain path to the shared LUN: a loop device of its own on the image."""
        device = self._state().get("loop")
        if not device:
            raise LabError(f"lab {self.lab.name!r} has no shared LUN (lun_size = 0)")
        return str(device)

    # --- running things ----------------------------------------------------------------------

    def exec_argv(
        self, argv: Sequence[str], *, cwd: str | Path | None = None, leaf: str = "procs"
    ) -> list[str]:
        """The command line that runs ``argv`` on this node (for tools that start processes).

        It joins the node's cgroup leaf, then its network, mount, UTS and PID namespaces.
        """
        if isinstance(argv, str):
            raise TypeError(f"argv must be a list of strings, not the string {argv!r}")
        init = self.init_pid()
        procs = self.cgroup / leaf / "cgroup.procs"
        return [
            "/bin/sh",
            "-c",
            'echo $$ > "$0" && exec "$@"',
            str(procs),
            "nsenter",
            f"--target={init}",
            "--net",
            "--mount",
            "--uts",
            "--pid",
            f"--wd={cwd or '/'}",
            "--",
            *argv,
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 60.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the node to completion; stdout and stderr are captured as text.

        :raises ProcessError: it exited non-zero and ``check`` (the message ends with its last
            line of stderr), or it ran past ``timeout`` seconds (then it was killed).
        """
        data = input.encode() if isinstance(input, str) else input
        full = self.exec_argv(argv, cwd=cwd)
        environment = None if env is None else {**os.environ, **env}
        popen = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            start_new_session=True,
        )
        try:
            out, err = popen.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            stuck = ""
            try:
                popen.communicate(timeout=_KILL_GRACE)
            except subprocess.TimeoutExpired:
                # Stuck in the kernel (I/O to hung storage): abandon it rather than hang too;
                # it is reaped later, once its I/O ends.
                for pipe in (popen.stdin, popen.stdout, popen.stderr):
                    if pipe is not None:
                        pipe.close()
                _children.append(popen)
                stuck = "; it ignores SIGKILL (stuck in the kernel) and was abandoned"
            raise ProcessError(
                argv,
                None,
                reason=f"on node {self.name}: still running after {timeout:g} s{stuck}",
            ) from exc
        done = subprocess.CompletedProcess(
            list(argv), popen.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )
        if check and done.returncode != 0:
            raise ProcessError(argv, done.returncode, done.stderr)
        return done

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        output: str | Path | None = None,
        leaf: str = "procs",
    ) -> LabProcess:
        """Start a long-lived process on the node and return at once.

        :param output: a file (on this machine) its stdout and stderr are appended to
            (default: discarded).
        """
        reap_children()
        full = self.exec_argv(argv, cwd=cwd, leaf=leaf)
        environment = None if env is None else {**os.environ, **env}
        sink = open(output, "ab") if output is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        finally:
            if output is not None:
                sink.close()  # type: ignore[union-attr]
        return LabProcess(popen, self)

    def host(self) -> LabHost:
        """A :class:`~lifekit.kit.Host` running commands on this node (async, for kits)."""
        return LabHost(self)

    def pids(self, match: str | None = None) -> list[int]:
        """The node's processes (this machine's PIDs), optionally those whose command line
        contains ``match``. PID 1 and the lab's own ``nsenter`` wrappers are left out."""
        state = self._state()
        init = state.get("init") or [None]
        found = []
        for pid in _sys.cgroup_all_procs(self.cgroup):
            if pid == init[0] or not _sys.alive(pid) or _sys.comm(pid) in _PLUMBING:
                continue
            if match is None or match in " ".join(_sys.cmdline(pid)):
                found.append(pid)
        return found

    def kill_process(self, match: str, sig: int = signal.SIGKILL) -> list[int]:
        """Kill the node's processes whose command line contains ``match`` (the death of one
        named process, e.g. only the lifekit daemon); the node stays up.

        :returns: the PIDs signalled.
        :raises LabError: no process matched.
        """
        pids = self.pids(match)
        if not pids:
            raise LabError(
                f"no process on node {self.name!r} has {match!r} in its command line; "
                f"running: {[' '.join(_sys.cmdline(pid)) for pid in self.pids()]}"
            )
        for pid in pids:
            _sys.signal_pid(pid, sig)
        return pids

    # --- faults ------------------------------------------------------------------------------

    def power_loss(self) -> None:
        """Cut the power: every process dies at one instant, every link goes, and filesystems
        on shared storage are shut down without flushing, so a survivor replays the journal
        exactly as after a real crash. A no-op when it is already off."""
        self.lab._power_loss(self.name)

    def power_on(self) -> None:
        """Boot the node: fresh namespaces, fresh ``/run``, links and addresses as configured,
        its persistent directories as they were. A no-op when it is already on."""
        self.lab._power_on(self.name)

    def restart(self) -> None:
        """Power loss (if it is on), then power on: a hard reset."""
        self.power_loss()
        self.power_on()

    def hang(self) -> None:
        """Freeze every process of the node where it stands (a hung server)."""
        self.lab._freeze(self.name, frozen=True)

    def thaw(self) -> None:
        """Let a hung node's processes run again."""
        self.lab._freeze(self.name, frozen=False)

    def hang_storage(self) -> None:
        """Freeze only the node's fenced storage path (nbdfuse, nbdkit): its I/O to the LUN
        stops answering, as with a hung SAN, while the node itself runs on."""
        self.lab._freeze_storage(self.name, frozen=True)

    def thaw_storage(self) -> None:
        """Let a hung storage path answer again."""
        self.lab._freeze_storage(self.name, frozen=False)

    def attach_fenced_disk(self, *, timeout: float = 15.0) -> str:
        """Reach the LUN through the node's own iSCSI session and return the block device.

        The session registers :attr:`scsi_key` at once (and reserves the LUN, Write Exclusive
        Registrants Only, if nobody has): once another node preempts that key, this node's
        writes fail at the target, as with fence_scsi. Attached again at every power on.
        """
        return self.lab._attach_fenced(self.name, timeout=timeout)

    def scsi(self, *steps: Sequence[object]) -> list[dict[str, Any]]:
        """Run SCSI-3 reservation steps on the LUN from this node, in one new iSCSI session.

        Steps are lists such as ``["register", key]``, ``["preempt", key, victim_key, 5]``,
        ``["keys"]``, ``["reservation"]`` (see :mod:`lifekit.lab._pr`); each returns a dict.
        The session is separate from the fenced path's and registers nothing by itself.

        :raises ProcessError: a step failed (the message names it and the SCSI status).
        """
        lab = self.lab
        done = self.run(
            [
                sys.executable,
                "-m",
                "lifekit.lab._pr",
                lab.iscsi_portal,
                lab.iscsi_target,
                f"{self.iqn}:control",
                json.dumps([list(step) for step in steps]),
            ],
            check=False,
        )
        results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        if done.returncode != 0:
            failed = results[-1] if results else {"error": done.stderr.strip()}
            raise ProcessError(["scsi", *map(str, steps)], done.returncode, str(failed))
        return results

    def preempt(self, victim: LabNode) -> str:
        """Fence ``victim`` at the target: register this node's key, then preempt the victim's
        (Write Exclusive Registrants Only). Returns the service action the target took
        (``PREEMPT`` where PREEMPT AND ABORT is unsupported, as on tgt)."""
        results = self.scsi(
            ["register", self.scsi_key], ["preempt", self.scsi_key, victim.scsi_key, 5]
        )
        return str(results[-1]["action"])

    def reservation(self) -> dict[str, Any]:
        """The LUN's registered keys and reservation holder, read from this node."""
        keys, holder = self.scsi(["keys"], ["reservation"])
        return {"keys": keys["keys"], "holder": holder["key"], "type": holder["type"]}

    @property
    def fenced_disk(self) -> str:
        """The block device of its fenced path (see :meth:`attach_fenced_disk`)."""
        device = self._state().get("fenced")
        if not device:
            raise LabError(
                f"node {self.name!r} has no fenced path attached; call "
                f"lab.node({self.name!r}).attach_fenced_disk() first"
            )
        return str(device)

    def wait_for(self, predicate: Any, *, timeout: float = 10.0, interval: float = 0.02) -> None:
        """Poll ``predicate()`` until it is true.

        :raises TimeoutError: still false after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.name}: condition not met within {timeout:g} s")
            time.sleep(interval)
