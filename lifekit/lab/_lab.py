"""The :class:`Lab`: a virtual cluster on this one machine, brought up and torn down whole.

Bring-up order (each step batched, so a three-node lab is up in a fraction of a second):
directories, state file and cgroups; the LUN image and one loop device per cluster node; every
network namespace at once; the switch's bridges; every veth; each node's addresses; every
node's PID 1 started together and awaited together; then tgtd on the storage node and the
lab's controller (power requests and watchdogs). Any failure tears down what was made.

Teardown does not trust the state file: :func:`lifekit.lab._clean.teardown` removes everything
carrying the lab's prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lifekit.errors import LabError, ProcessError
from lifekit.lab import _clean, _impair, _net, _state, _sys, _tgt
from lifekit.lab._impair import Impairment
from lifekit.lab._node import LabNode, _children, reap_children
from lifekit.lab._spec import CLIENT, SAN, STORAGE, LabSpec, check_lab_name

__all__ = ["Lab"]

_INIT = Path(__file__).with_name("_init.py")
_BOOT_TIMEOUT = 15.0
ISCSI_PORT = 3260


def _run(argv: list[str]) -> None:
    _sys.run(argv)


class Lab:
    """A virtual cluster on this machine: nodes, networks, a client, shared storage, faults.

    Use it as a context manager (it is torn down on any exit, Ctrl-C included)::

        with Lab(LabSpec(nodes=("n1", "n2"))) as lab:
            lab.node("n1").run(["ip", "addr"])

    or call :meth:`up` and :meth:`down`. Another process reaches a running lab with
    :meth:`attach` (``lifekit lab exec`` does). Needs root.

    :param spec: what the lab is made of (default: :class:`LabSpec`'s three nodes, networks
        ``public`` and ``hb1``, a client and a 64 MiB LUN).
    :param name: a unique name (``[a-z0-9]{1,12}``; default: random).
    :param keep_directory: keep the lab's directory (logs, node state) after :meth:`down`.
    """

    def __init__(
        self,
        spec: LabSpec | None = None,
        *,
        name: str | None = None,
        keep_directory: bool = False,
    ) -> None:
        self.spec = spec or LabSpec()
        self.name = check_lab_name(name) if name else secrets.token_hex(3)
        self.id = _state.lab_id(self.name)
        self.directory = _state.base_dir() / self.id
        self.keep_directory = keep_directory
        self._nodes = {
            member: LabNode(self, member, networks, host)
            for member, networks, host in self.spec.members()
        }
        self._cgroup: Path | None = None

    def __repr__(self) -> str:
        return f"<Lab {self.name} nodes={list(self.spec.nodes)}>"

    @classmethod
    def attach(cls, name: str) -> Lab:
        """The running lab called ``name`` (made by another process, e.g. ``lifekit lab up``).

        :raises LabError: there is no such lab.
        """
        directory = _state.base_dir() / _state.lab_id(check_lab_name(name))
        state = _state.read_state(directory)
        if not state:
            raise LabError(
                f"there is no lab {name!r} (no {directory}/state.json); "
                "`lifekit lab status` lists the labs"
            )
        return cls(LabSpec.from_json(state["spec"]), name=name)

    # --- names and places --------------------------------------------------------------------

    @property
    def cgroup(self) -> Path:
        """The lab's cgroup (a child per node, one for the controller)."""
        if self._cgroup is None:
            self._cgroup = _sys.cgroup2_root() / self.id
        return self._cgroup

    @property
    def switch_netns(self) -> str:
        """The network namespace holding the bridges."""
        return f"{self.id}-sw"

    @property
    def lun_image(self) -> Path:
        """The shared LUN's image file."""
        return self.directory / "lun.img"

    @property
    def iscsi_target(self) -> str:
        """The iSCSI name of the LUN's target on the storage node."""
        return f"iqn.2026-11.lab.lifekit:{self.name}.lun"

    @property
    def iscsi_portal(self) -> str:
        """``address:port`` of the iSCSI target on the ``san`` network."""
        return f"{self.storage.address(SAN)}:{ISCSI_PORT}"

    def node(self, name: str) -> LabNode:
        """A node by name (cluster nodes, ``client``, ``storage``).

        :raises LabError: no such node.
        """
        try:
            return self._nodes[name]
        except KeyError:
            raise LabError(
                f"lab {self.name!r} has no node {name!r}; its nodes are {list(self._nodes)}"
            ) from None

    @property
    def nodes(self) -> list[LabNode]:
        """The cluster nodes, in priority order (not the client or storage node)."""
        return [self._nodes[name] for name in self.spec.nodes]

    @property
    def client(self) -> LabNode:
        """The client node."""
        return self.node(CLIENT)

    @property
    def storage(self) -> LabNode:
        """The storage node (tgtd), present when the spec has ``iscsi``."""
        return self.node(STORAGE)

    # --- state -------------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        state = _state.read_state(self.directory)
        if not state:
            raise LabError(f"lab {self.name!r} is not up (no state in {self.directory})")
        return state

    @contextlib.contextmanager
    def _changing(self) -> Any:
        with _state.locked(self.directory):
            state = self._read()
            yield state
            _state.write_state(self.directory, state)

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.down()
            return
        # The body's exception is what the caller must see; a failed teardown is a note on it.
        try:
            self.down()
        except Exception as teardown:  # noqa: BLE001 - reported on the body's exception
            exc.add_note(f"the lab's teardown failed too: {teardown}")

    def up(self, *, detached: bool = False) -> Lab:
        """Build the lab and boot every node.

        :param detached: the lab outlives this process (``lifekit lab up``); otherwise it
            belongs to this process, and ``lifekit lab clean`` removes it once this process is
            gone.
        :raises LabError: not root, a missing tool or kernel feature, or the name is taken.
        """
        if os.geteuid() != 0:
            raise LabError("the lab needs root (namespaces, mounts, loop devices); run as root")
        taken = LabError(
            f"a lab named {self.name!r} already exists; pick another name, or remove it "
            f"with `lifekit lab down {self.name}` (or `lifekit lab clean {self.name}`)"
        )
        if _clean.netns_of(self.id):
            raise taken
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Claiming the directory is the one atomic step: of two racing labs of one name,
            # the loser stops here, before it could tear down the winner's lab.
            self.directory.mkdir()
        except FileExistsError:
            raise taken from None
        try:
            self._build(detached=detached)
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return self

    def _build(self, *, detached: bool) -> None:
        (self.directory / "logs").mkdir()
        owner = None if detached else [os.getpid(), _sys.start_time(os.getpid())]
        state: dict[str, Any] = {
            "version": _state.STATE_VERSION,
            "name": self.name,
            "spec": self.spec.to_json(),
            "owner": owner,
            "created": time.time(),
            "nodes": {
                name: {"power": "off", "init": None, "loop": None, "fenced": None}
                for name in self._nodes
            },
            "cut": [],
            "partition": None,
            "impairments": {},
            "controller": None,
        }
        _state.write_state(self.directory, state)
        for member in self._nodes.values():
            _sys.cgroup_create(member.cgroup / "procs")
            _sys.cgroup_create(member.cgroup / "hba")
            for path in self.spec.private_dirs:
                (member.directory / "root" / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
            (member.directory / "bmc").mkdir(parents=True, exist_ok=True)
        for path in self.spec.private_dirs:
            Path(path).mkdir(parents=True, exist_ok=True)
        if self.spec.lun_size:
            with open(self.lun_image, "wb") as image:
                image.truncate(self.spec.lun_size)
            for name in self.spec.nodes:
                device = _sys.run(["losetup", "--find", "--show", str(self.lun_image)])
                state["nodes"][name]["loop"] = device.stdout.decode().strip()
        _state.write_state(self.directory, state)
        _net.run_batch([f"netns add {self.switch_netns}"])
        _net.run_batch(_net.switch_commands(self.spec), netns=self.switch_netns)
        with _state.locked(self.directory):
            state = self._read()
            self._boot(list(self._nodes), state)
            _state.write_state(self.directory, state)
        if self.spec.iscsi:
            self._start_target()
        self._start_controller()

    def down(self) -> None:
        """Tear the lab down: kill every process, remove every namespace, loop device, cgroup
        and (unless ``keep_directory``) its directory. Safe to call twice."""
        try:
            _clean.teardown(self.id, self.directory, keep_directory=self.keep_directory)
        finally:
            for child in list(_children):
                if child.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(1.0)
            reap_children()

    # --- booting nodes -----------------------------------------------------------------------

    def _setup_for(self, node: LabNode, state: dict[str, Any]) -> dict[str, Any]:
        mounts: list[list[str]] = [
            # The machine's named netns files would be copied into the node's mount
            # namespace and keep other labs' namespaces alive: hide them first.
            ["umount", "/run/netns"],
            ["tmpfs", "/run", "mode=755,size=64m"],
            ["tmpfs", "/dev/shm", "mode=1777"],  # noqa: S108 - the node's own, not shared
            ["sysfs", "/sys"],
            ["mkdir", "/run/lock"],
            ["mkdir", "/run/lifekit-lab/bmc"],
            ["bind", str(node.directory / "bmc"), "/run/lifekit-lab/bmc"],
            ["mkdir", "/run/lifekit-lab/disk"],
        ]
        loop = state["nodes"][node.name].get("loop")
        if loop:
            mounts.append(["symlink", loop, "/run/lifekit-lab/disk/lun"])
        mounts += [
            ["bind", str(node.directory / "root" / path.lstrip("/")), path]
            for path in self.spec.private_dirs
        ]
        return {"hostname": node.name, "mounts": mounts}

    def _boot(self, names: Sequence[str], state: dict[str, Any]) -> None:
        """Power on the named nodes together (their state entries are updated in place)."""
        nodes = [self._nodes[name] for name in names]
        _net.run_batch([f"netns add {node.netns}" for node in nodes])
        links: list[str] = []
        for node in nodes:
            links += _net.link_commands(
                self.spec,
                lab=self.id,
                node=node.name,
                networks=node.networks,
                host=node.host_number,
                node_netns=node.netns,
                switch_netns=self.switch_netns,
            )
        _net.run_batch(links)
        addressing = [
            subprocess.Popen(
                ["ip", "-n", node.netns, "-batch", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for node in nodes
        ]
        for node, popen in zip(nodes, addressing, strict=True):
            commands = _net.node_commands(self.spec, networks=node.networks, host=node.host_number)
            _out, err = popen.communicate(("\n".join(commands) + "\n").encode())
            if popen.returncode:
                raise ProcessError(
                    ["ip", "-n", node.netns, "-batch"], popen.returncode, err.decode()
                )
        cut = [tuple(pair) for pair in state["cut"]]
        ports: list[str] = []
        for node in nodes:
            ports += _net.port_commands(node=node.name, networks=node.networks, cut=cut)
        _net.run_batch(ports, netns=self.switch_netns)
        inits = [self._start_init(node, state) for node in nodes]
        deadline = time.monotonic() + _BOOT_TIMEOUT
        for node, popen in zip(nodes, inits, strict=True):
            self._await_line(f"node {node.name}", popen, deadline, log=node.directory / "init.log")
            init = int(Path(f"/proc/{popen.pid}/task/{popen.pid}/children").read_text().split()[0])
            entry = state["nodes"][node.name]
            entry.update(power="on", init=[init, _sys.start_time(init)], frozen=False)
        if state.get("partition"):
            self._apply_partition(state["partition"])
        for node in nodes:
            for network in node.networks:
                if _net.port(node.name, network) in state["impairments"]:
                    self._apply(state, _net.port(node.name, network))

    def _start_init(self, node: LabNode, state: dict[str, Any]) -> subprocess.Popen[bytes]:
        setup = json.dumps(self._setup_for(node, state))
        argv = [
            "/bin/sh",
            "-c",
            'echo $$ > "$0" && exec "$@"',
            str(node.cgroup / "procs" / "cgroup.procs"),
            "nsenter",
            f"--net=/run/netns/{node.netns}",
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            sys.executable,
            "-I",
            "-S",
            str(_INIT),
            setup,
        ]
        log = open(node.directory / "init.log", "ab")  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd="/",
                start_new_session=True,
            )
        finally:
            log.close()
        _children.append(popen)
        return popen

    def _await_line(
        self, what: str, popen: subprocess.Popen[bytes], deadline: float, *, log: Path
    ) -> None:
        """Wait for the ``ready`` line a process prints once it is up."""
        if popen.stdout is None:  # pragma: no cover - always a pipe here
            raise LabError(f"{what}: no pipe to read its ready line from")
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([popen.stdout], [], [], max(0.0, remaining))
            if not ready:
                raise LabError(f"{what} was not ready within {_BOOT_TIMEOUT:g} s (see {log})")
            chunk = os.read(popen.stdout.fileno(), 64)
            if not chunk:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise LabError(f"{what} failed to start: {' / '.join(tail)} (see {log})")
            line += chunk
        popen.stdout.close()

    # --- power -------------------------------------------------------------------------------

    def _crash_filesystems(self, node: LabNode, entry: dict[str, Any]) -> list[str]:
        """Shut down, without a log flush, every filesystem on the LUN (any path to it) or on
        the node's fenced path that any process of the node has mounted, in any of its mount
        namespaces; return the ones that refused."""
        lun = str(self.lun_image)
        devices = [device for device, backing in _sys.loop_devices().items() if backing == lun]
        numbers = _sys.device_numbers([*devices, entry.get("fenced")])
        mounts = _sys.namespace_mounts(_sys.cgroup_all_procs(node.cgroup))
        return _sys.shutdown_mounts(mounts, numbers)

    def _power_loss(self, name: str) -> None:
        node = self.node(name)
        failed: list[str] = []
        with self._changing() as state:
            entry = state["nodes"][name]
            if entry["power"] != "on":
                return
            procs, hba = node.cgroup / "procs", node.cgroup / "hba"
            try:
                # Its storage path must carry the journal abort (a hung node's is frozen too):
                # thawed first, so that no process waits on it while the rest freezes.
                _sys.cgroup_freeze(hba, False)
                # The instant of the power loss: the node's processes stop where they are.
                _sys.cgroup_freeze(procs, True)
                failed = self._crash_filesystems(node, entry)
                for port in [_net.port(name, network) for network in node.networks]:
                    if port in state["impairments"]:
                        self._unapply(state, port)
            finally:
                # Whatever failed above, the node ends powered off and its state says so.
                self._force_off(node, state)
        reap_children()
        if failed:
            raise LabError(
                f"node {name!r} lost power, but these filesystems refused the shutdown ioctl, so "
                f"they were unmounted cleanly instead of crashing: {'; '.join(failed)}"
            )

    def _force_off(self, node: LabNode, state: dict[str, Any]) -> None:
        """Cut the node's links, kill everything in it and drop its namespaces (idempotent)."""
        entry = state["nodes"][node.name]
        _sys.run(
            ["ip", "-n", self.switch_netns, "-force", "-batch", "-"],
            input="".join(
                f"link del {_net.port(node.name, network)}\n" for network in node.networks
            ).encode(),
            check=False,
        )
        _sys.cgroup_kill(node.cgroup)
        _sys.cgroup_freeze(node.cgroup / "procs", False)
        _sys.cgroup_freeze(node.cgroup / "hba", False)
        if entry.get("fenced"):
            _sys.wait_unused(entry["fenced"], timeout=2.0)
            _sys.loop_detach(entry["fenced"])
            entry["fenced"] = None
            entry["fenced_wanted"] = True
        _sys.run(["ip", "netns", "del", node.netns], check=False)
        if entry.get("loop"):
            # The mount namespace died with its last process; wait until the kernel has let
            # go of the node's filesystems so a survivor may take the LUN at once.
            _sys.wait_unused(entry["loop"], timeout=5.0)
        entry.update(power="off", init=None, frozen=False)

    def _power_on(self, name: str) -> None:
        node = self.node(name)
        with self._changing() as state:
            if state["nodes"][name]["power"] == "on":
                return
            try:
                self._boot([name], state)
            except BaseException:
                # A half-booted node is powered off again, so the next power_on starts clean.
                self._force_off(node, state)
                raise
        if state["nodes"][name].get("fenced_wanted"):
            self._attach_fenced(name)

    def _freeze_storage(self, name: str, *, frozen: bool) -> None:
        node = self.node(name)
        with self._changing() as state:
            node.init_pid()
            if not state["nodes"][name].get("fenced"):
                raise LabError(
                    f"node {name!r} has no fenced storage path to hang; attach one with "
                    f"lab.node({name!r}).attach_fenced_disk()"
                )
            _sys.cgroup_freeze(node.cgroup / "hba", frozen)
            state["nodes"][name]["storage_frozen"] = frozen

    def _freeze(self, name: str, *, frozen: bool) -> None:
        node = self.node(name)
        with self._changing() as state:
            node.init_pid()
            _sys.cgroup_freeze(node.cgroup / "hba", frozen)
            _sys.cgroup_freeze(node.cgroup / "procs", frozen)
            state["nodes"][name]["frozen"] = frozen

    # --- network faults ----------------------------------------------------------------------

    def _check_link(self, node: str, network: str) -> LabNode:
        member = self.node(node)
        if network not in member.networks:
            raise LabError(
                f"node {node!r} has no link on network {network!r}; "
                f"it is on {list(member.networks)}"
            )
        return member

    def cut(self, node: str, network: str) -> None:
        """Pull ``node``'s cable on ``network``: only that path stops."""
        self._check_link(node, network)
        with self._changing() as state:
            if [node, network] not in state["cut"]:
                state["cut"].append([node, network])
            if state["nodes"][node]["power"] == "on":
                _net.run_batch(
                    [f"link set {_net.port(node, network)} down"], netns=self.switch_netns
                )

    def reconnect(self, node: str, network: str) -> None:
        """Plug a cut cable back in."""
        self._check_link(node, network)
        with self._changing() as state:
            with contextlib.suppress(ValueError):
                state["cut"].remove([node, network])
            if state["nodes"][node]["power"] == "on":
                _net.run_batch([f"link set {_net.port(node, network)} up"], netns=self.switch_netns)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the lab into groups that cannot reach each other on any network.

        Nodes named in no group (the client, say) still reach everyone. Replaces an earlier
        partition; :meth:`heal` ends it.
        """
        lists = [sorted(set(group)) for group in groups]
        if len(lists) < 2:
            raise LabError(f"a partition needs at least two groups, got {lists}")
        seen: set[str] = set()
        for group in lists:
            for name in group:
                self.node(name)
                if name in seen:
                    raise LabError(f"node {name!r} is in two groups of the partition {lists}")
                seen.add(name)
        with self._changing() as state:
            self._apply_partition(lists)
            state["partition"] = lists

    def _apply_partition(self, groups: Sequence[Sequence[str]]) -> None:
        members = {name: node.networks for name, node in self._nodes.items()}
        _net.nft(self.switch_netns, _net.partition_ruleset(groups, members))

    def heal(self) -> None:
        """End every network fault: cut links come back, a partition ends, impairments go."""
        with self._changing() as state:
            up = [
                f"link set {_net.port(node, network)} up"
                for node, network in state["cut"]
                if state["nodes"][node]["power"] == "on"
            ]
            _net.run_batch(up, netns=self.switch_netns)
            state["cut"] = []
            if state.get("partition"):
                _net.nft(self.switch_netns, _net.clear_partition_ruleset())
                state["partition"] = None
            self._clear_impairments(state)

    def impair(
        self,
        node: str,
        network: str,
        *,
        loss: float = 0.0,
        rate_kbit: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Degrade ``node``'s link on ``network`` (replacing an earlier impairment of it).

        :param loss: the fraction of frames dropped, in each direction (0 to 1).
        :param rate_kbit: a bandwidth cap in kbit/s, in each direction.
        :param delay: seconds added in each direction (a round trip grows by twice that),
            by a userspace relay: the kernel here has no ``netem``.

        Impairments belong to the cable, not the node: they stay across its power loss and
        come back when it boots, until :meth:`heal`. All zero removes the impairment.
        """
        self._check_link(node, network)
        impairment = Impairment(loss=loss, rate_kbit=rate_kbit, delay=delay)
        port = _net.port(node, network)
        with self._changing() as state:
            powered = state["nodes"][node]["power"] == "on"
            if port in state["impairments"] and powered:
                self._unapply(state, port)
            state["impairments"].pop(port, None)
            if not impairment.is_none:
                state["impairments"][port] = {
                    "loss": loss,
                    "rate_kbit": rate_kbit,
                    "delay": delay,
                    "relay": None,
                }
                if powered:
                    self._apply(state, port)

    def _apply(self, state: dict[str, Any], port: str) -> None:
        entry = state["impairments"][port]
        impairment = Impairment(
            loss=entry["loss"], rate_kbit=entry["rate_kbit"], delay=entry["delay"]
        )
        network = port.split("-", 1)[1]
        _impair.apply_impairment(self.switch_netns, port, impairment, bridge=network, run=_run)
        if impairment.delay:
            argv = _impair.delay_relay_argv(self.switch_netns, port, impairment.delay)
            entry["relay"] = self._start_helper(argv, f"relay-{port}")

    def _unapply(self, state: dict[str, Any], port: str) -> None:
        entry = state["impairments"][port]
        relay = entry.get("relay")
        if relay and _sys.alive(relay[0], relay[1]):
            _sys.signal_pid(relay[0])
            _sys.wait_gone([relay[0]], timeout=5.0)
        entry["relay"] = None
        impairment = Impairment(
            loss=entry["loss"], rate_kbit=entry["rate_kbit"], delay=entry["delay"]
        )
        _impair.clear_impairment(
            self.switch_netns,
            port,
            impairment,
            bridge=port.split("-", 1)[1],
            run=_run,
        )

    def _clear_impairments(self, state: dict[str, Any]) -> None:
        for port in list(state["impairments"]):
            node = port.split("-", 1)[0]
            if state["nodes"][node]["power"] == "on":
                self._unapply(state, port)
        state["impairments"] = {}

    def _start_helper(self, argv: list[str], label: str) -> list[int]:
        """Start a lab-wide helper process (outside every node) and wait for its ``ready``."""
        leaf = self.cgroup / "lab-helpers"  # a '-' no node name can have
        _sys.cgroup_create(leaf)
        log = open(self.directory / "logs" / f"{label}.log", "ab")  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(leaf / "cgroup.procs"), *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd="/",
                start_new_session=True,
            )
        finally:
            log.close()
        _children.append(popen)
        self._await_line(
            label,
            popen,
            time.monotonic() + _BOOT_TIMEOUT,
            log=self.directory / "logs" / f"{label}.log",
        )
        return [popen.pid, _sys.start_time(popen.pid) or 0]

    # --- storage -----------------------------------------------------------------------------

    def _start_target(self) -> None:
        """tgtd on the storage node, exporting the LUN image as LUN 1 of one target."""
        storage = self.storage
        env = _tgt.tgt_env(Path("/run/tgtd.sock"))  # the storage node's private /run
        storage.spawn(
            _tgt.tgtd_argv(self.iscsi_portal), env=env, output=self.directory / "logs" / "tgtd.log"
        )
        _tgt.wait_ready(lambda argv: storage.run(argv, env=env, check=False).returncode)
        for argv in _tgt.setup_argvs(
            tid=1, target_name=self.iscsi_target, backing_store=self.lun_image
        ):
            storage.run(argv, env=env)

    def _attach_fenced(self, name: str, *, timeout: float = 15.0) -> str:
        node = self.node(name)
        if not self.spec.iscsi:
            raise LabError(
                f"lab {self.name!r} has no iSCSI target: make it with LabSpec(iscsi=True) "
                "to give nodes a fenced path"
            )
        with self._changing() as state:
            entry = state["nodes"][name]
            if entry.get("fenced"):
                return str(entry["fenced"])
            node.init_pid()
            # The lab's id in the path lets `lifekit lab clean` find the loop device.
            directory = Path("/run/lifekit-lab") / self.id
            # The file's own name carries the lab's id too: once the node's mount namespace is
            # gone, the loop device shows only the path inside the FUSE mount.
            fuse_file = directory / "fuse" / f"{self.id}-{name}.lun"
            pidfile = directory / "nbdfuse.pid"
            node.run(["mkdir", "-p", str(fuse_file.parent)])
            process = node.spawn(
                _tgt.fenced_path_argv(
                    fuse_file=fuse_file,
                    pidfile=pidfile,
                    portal=self.iscsi_portal,
                    target=self.iscsi_target,
                    initiator=node.iqn,
                    key=node.scsi_key,
                ),
                leaf="hba",
                output=node.directory / "fenced.log",
            )
            deadline = time.monotonic() + timeout
            while not node.path(pidfile).exists():
                if not process.running() or time.monotonic() > deadline:
                    process.kill()
                    log = (node.directory / "fenced.log").read_text(errors="replace")
                    raise LabError(
                        f"the fenced path of node {name!r} did not come up: "
                        f"{' / '.join(log.strip().splitlines()[-3:])}"
                    )
                time.sleep(0.005)
            device = node.run(_tgt.loop_attach_argv(fuse_file)).stdout.strip()
            node.run(["ln", "-sf", device, "/run/lifekit-lab/disk/fenced"])
            entry["fenced"] = device
            entry["fenced_wanted"] = True
            return device

    # --- the controller ----------------------------------------------------------------------

    def _start_controller(self) -> None:
        argv = [sys.executable, "-m", "lifekit.lab._controller", self.name]
        pid = self._start_helper(argv, "controller")
        with self._changing() as state:
            state["controller"] = pid

    # --- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The lab as JSON-compatible data: nodes (power, addresses, disks), faults."""
        state = self._read()
        nodes = {}
        for name, node in self._nodes.items():
            entry = state["nodes"][name]
            nodes[name] = {
                "power": entry["power"],
                "frozen": bool(entry.get("frozen")),
                "netns": node.netns,
                "addresses": {
                    network: [node.address(network), node.address(network, 6)]
                    for network in node.networks
                },
                "disk": entry.get("loop"),
                "fenced_disk": entry.get("fenced"),
            }
        return {
            "name": self.name,
            "id": self.id,
            "directory": str(self.directory),
            "detached": state.get("owner") is None,
            "nodes": nodes,
            "networks": list(self.spec.all_networks),
            "cut": state["cut"],
            "partition": state.get("partition"),
            "impairments": state.get("impairments", {}),
            "lun": str(self.lun_image) if self.spec.lun_size else None,
        }
