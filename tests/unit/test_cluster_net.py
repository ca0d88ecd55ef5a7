"""A simulated cluster for the cluster engine: N nodes, a network and virtual time.

:class:`Net` plays every node's runtime at once: it runs one :class:`ClusterEngine` per node,
carries heartbeats over two paths per link with delay, jitter (so reordering), loss and
partitions, runs each node's clock at its own rate, models each node's local hierarchies
(bringing one in or out takes ``action_delay``), its watchdog (fires ``W`` of the node's clock
after the last feed and takes everything out, like a reset), a witness, daemon hangs (events
queue, heartbeats stop, hierarchies stay in service until the watchdog fires), crashes and
restarts. After every simulated event it checks the ground truth: no hierarchy is possibly in
service (starting, in, stopping or stuck) on two nodes.

The unit tests below check the simulator itself; ``test_cluster_*.py`` and
``tests/stateful/test_cluster_sim.py`` use it.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pytest

from lifekit._cluster import (
    BringInService,
    ClusterConfig,
    ClusterEngine,
    ClusterEvent,
    ClusterOutput,
    FeedWatchdog,
    FenceConfirmed,
    HeartbeatReceived,
    HierarchyEscalated,
    LocalHierarchyChanged,
    LocalPhase,
    NodeSpec,
    PeerOutOfServiceEvidence,
    QuorumMode,
    RequestWitnessVote,
    SendHeartbeat,
    TakeOutOfService,
    Witness,
    WitnessVoteGranted,
    WitnessVoteRefused,
    place,
)
from lifekit._model import (
    HierarchySpec,
    Model,
    Policy,
    Resource,
    SwitchbackType,
    build_model,
)

PATHS = ("lan", "backbone")
WITNESS = "witness"


def make_model(
    hierarchies: dict[str, tuple[str, ...]],
    *,
    switchback: SwitchbackType = SwitchbackType.INTELLIGENT,
) -> Model:
    """One single-resource hierarchy per entry: ``{root: node priority list}``."""
    return build_model(
        [Resource(tag=root, kind="app", params={}, policy=Policy()) for root in hierarchies],
        {
            root: HierarchySpec(nodes=nodes, switchback=switchback)
            for root, nodes in hierarchies.items()
        },
    )


def make_config(nodes: Iterable[str], **settings: Any) -> ClusterConfig:
    """A fast cluster: 0.2 s heartbeats, 3 misses, a 1 s watchdog, 10 % clock margin."""
    defaults: dict[str, Any] = {
        "heartbeat_interval": 0.2,
        "misses": 3,
        "watchdog_timeout": 1.0,
        "clock_margin": 0.1,
        "external_lease": 1.0,
    }
    defaults.update(settings)
    return ClusterConfig(nodes=[NodeSpec(name, PATHS) for name in nodes], **defaults)


class DoubleService(AssertionError):
    """The ground truth had one hierarchy possibly in service on two nodes."""


@attrs.define
class SimNode:
    """One simulated machine: its daemon's engine, its hierarchies, its watchdog and clock."""

    name: str
    rate: float
    offset: float
    engine: ClusterEngine | None = None
    incarnation: int = 0
    hung: bool = False
    #: Bumped at every crash: action completions of an earlier boot are dropped.
    boot: int = 0
    phase: dict[str, LocalPhase] = attrs.field(factory=dict)
    desired: dict[str, bool] = attrs.field(factory=dict)
    #: Roots whose next remove fails (a stuck resource: fencing required).
    remove_fails: set[str] = attrs.field(factory=set)
    failed_marks: set[str] = attrs.field(factory=set)
    inbox: list[ClusterEvent | None] = attrs.field(factory=list)
    last_feed: float | None = None
    last_now: float = -1e18
    outputs: list[ClusterOutput] = attrs.field(factory=list)

    @property
    def up(self) -> bool:
        return self.engine is not None

    def clock(self, real: float) -> float:
        return self.offset + self.rate * real

    def real(self, local: float) -> float:
        return (local - self.offset) / self.rate


class Net:
    """The simulated cluster. Time is real (virtual) seconds; each node sees its own clock.

    :param rates: each node's clock rate (keep them within ``1 .. 1 + clock_margin``).
    :param check: check the no-double-service invariant after every event.
    """

    def __init__(
        self,
        model: Model,
        config: ClusterConfig,
        *,
        seed: int = 0,
        rates: dict[str, float] | None = None,
        action_delay: float = 0.05,
        base_delay: float = 0.002,
        jitter: float = 0.02,
        check: bool = True,
        start: bool = True,
    ) -> None:
        self.model = model
        self.config = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self.action_delay = action_delay
        self.base_delay = base_delay
        self.jitter = jitter
        self.check = check
        self.nodes = {
            name: SimNode(
                name=name,
                rate=(rates or {}).get(name, 1.0),
                offset=1000.0 * (index + 1),
                phase=dict.fromkeys(model.hierarchies, LocalPhase.OUT),
                desired=dict.fromkeys(model.hierarchies, False),
            )
            for index, name in enumerate(config.names)
        }
        self.group: dict[str, int] = dict.fromkeys([*config.names, WITNESS], 0)
        self.cut_paths: set[str] = set()
        #: Per directed link (sender, receiver): probability of losing each message.
        self.loss: dict[tuple[str, str], float] = {}
        #: Per directed link: extra delay added to each message.
        self.delay: dict[tuple[str, str], float] = {}
        self.witness = Witness(config.external_lease)
        self.witness_up = True
        #: If set, exactly these nodes reach the witness, whatever the groups say (the witness
        #: on a third site that both halves of a split can still reach).
        self.witness_reach: set[str] | None = None
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.delivered = 0
        self.max_in_service: dict[str, int] = dict.fromkeys(model.hierarchies, 0)
        #: How many times a hierarchy started on a node other than the one that last started it.
        self.moves = 0
        self.last_holder: dict[str, str] = {}
        if start:
            for name in config.names:
                self.restart(name)

    # -- ground truth ---------------------------------------------------------------------------

    def in_service(self, root: str) -> list[str]:
        """Nodes that possibly have ``root`` in service now (anything but OUT)."""
        return [name for name, node in self.nodes.items() if node.phase[root] is not LocalPhase.OUT]

    def running(self, root: str) -> list[str]:
        """Nodes that have ``root`` fully in service now."""
        return [name for name, node in self.nodes.items() if node.phase[root] is LocalPhase.IN]

    def _check(self) -> None:
        for root in self.model.hierarchies:
            holders = self.in_service(root)
            self.max_in_service[root] = max(self.max_in_service[root], len(holders))
            if self.check and len(holders) > 1:
                raise DoubleService(
                    f"t={self.now:.3f}: {root!r} possibly in service on {holders}: "
                    + ", ".join(f"{n}={self.nodes[n].phase[root].value}" for n in holders)
                )

    # -- scheduling -----------------------------------------------------------------------------

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), action))

    def _next_time(self) -> float:
        times = [self._queue[0][0]] if self._queue else []
        for node in self.nodes.values():
            if node.engine is None:
                continue
            if node.last_feed is not None:
                times.append(node.real(node.last_feed + self.config.watchdog_timeout))
            if not node.hung:
                deadline = node.engine.next_deadline()
                if deadline is not None:
                    times.append(node.real(deadline))
        return min(times) if times else float("inf")

    def run(self, duration: float) -> None:
        """Advance virtual time by ``duration`` seconds, processing everything due."""
        end = self.now + duration
        while True:
            when = self._next_time()
            if when > end:
                break
            self.now = max(self.now, when)
            self._step()
        self.now = end

    def _step(self) -> None:
        while self._queue and self._queue[0][0] <= self.now:
            _, _, action = heapq.heappop(self._queue)
            action()
            self._check()
        for node in self.nodes.values():
            if node.engine is None:
                continue
            if (
                node.last_feed is not None
                and node.clock(self.now) >= node.last_feed + self.config.watchdog_timeout - 1e-9
            ):
                self.crash(node.name)  # the watchdog resets the machine
                self._check()
                continue
            if node.hung:
                continue
            deadline = node.engine.next_deadline()
            if deadline is not None and node.real(deadline) <= self.now + 1e-12:
                self.call(node, None, at_least=deadline)
                self._check()

    # -- one node's runtime ---------------------------------------------------------------------

    def _local_now(self, node: SimNode, at_least: float | None = None) -> float:
        now = max(node.clock(self.now), node.last_now)
        if at_least is not None:
            now = max(now, at_least)
        node.last_now = now
        return now

    def call(
        self, node: SimNode, event: ClusterEvent | None, at_least: float | None = None
    ) -> None:
        """Give the node's engine an event (``None``: its timer), or queue it while hung."""
        if node.engine is None:
            return
        if node.hung:
            node.inbox.append(event)
            return
        now = self._local_now(node, at_least)
        engine = node.engine
        outputs = engine.handle_timer(now) if event is None else engine.handle(event, now)
        self._run_outputs(node, outputs, now)

    def _run_outputs(self, node: SimNode, outputs: list[ClusterOutput], now: float) -> None:
        node.outputs.extend(outputs)
        for output in outputs:
            if isinstance(output, SendHeartbeat):
                self._broadcast(node.name, output)
            elif isinstance(output, FeedWatchdog):
                node.last_feed = now
            elif isinstance(output, BringInService):
                node.desired[output.root] = True
                self._kick(node, output.root)
            elif isinstance(output, TakeOutOfService):
                node.desired[output.root] = False
                self._kick(node, output.root)
            elif isinstance(output, RequestWitnessVote):
                self._ask_witness(node.name, output.requested_at)

    def _link_up(self, src: str, dst: str, path: str | None = None) -> bool:
        if self.witness_reach is not None and WITNESS in (src, dst):
            return (dst if src == WITNESS else src) in self.witness_reach
        return self.group[src] == self.group[dst] and (path is None or path not in self.cut_paths)

    def _transit(self, src: str, dst: str) -> float | None:
        if self.rng.random() < self.loss.get((src, dst), 0.0):
            return None
        return self.base_delay + self.rng.random() * self.jitter + self.delay.get((src, dst), 0.0)

    def _broadcast(self, src: str, output: SendHeartbeat) -> None:
        for dst in self.nodes:
            if dst == src:
                continue
            for path in PATHS:
                if not self._link_up(src, dst, path):
                    continue
                transit = self._transit(src, dst)
                if transit is None:
                    continue
                event = HeartbeatReceived(node=src, path=path, report=output.report)
                self._at(self.now + transit, self._deliverer(src, dst, path, event))

    def _deliverer(self, src: str, dst: str, path: str, event: ClusterEvent) -> Callable[[], None]:
        def deliver() -> None:
            if self._link_up(src, dst, path):  # a partition also cuts what is in flight
                self.delivered += 1
                self.call(self.nodes[dst], event)

        return deliver

    def _ask_witness(self, src: str, requested_at: float) -> None:
        if not self.witness_up or not self._link_up(src, WITNESS):
            return
        transit = self._transit(src, WITNESS)
        if transit is None:
            return

        def arrive() -> None:
            if not self.witness_up or not self._link_up(src, WITNESS):
                return
            grant = self.witness.grant(src, self.now)
            back = self._transit(WITNESS, src)
            if back is None:
                return
            answer: ClusterEvent
            if grant is None:
                answer = WitnessVoteRefused(requested_at=requested_at)
            else:
                answer = WitnessVoteGranted(requested_at=requested_at, valid_for=grant.valid_for)
            boot = self.nodes[src].boot

            def reply() -> None:
                node = self.nodes[src]
                if node.boot == boot and self._link_up(WITNESS, src):
                    self.call(node, answer)

            self._at(self.now + back, reply)

        self._at(self.now + transit, arrive)

    def _kick(self, node: SimNode, root: str) -> None:
        """Start the local action the desired state asks for, if none is running."""
        phase, want = node.phase[root], node.desired[root]
        if phase is LocalPhase.OUT and want:
            self._set_phase(node, root, LocalPhase.STARTING)
            self._finish_later(node, root, LocalPhase.IN)
        elif phase is LocalPhase.IN and not want:
            self._set_phase(node, root, LocalPhase.STOPPING)
            stuck = root in node.remove_fails
            node.remove_fails.discard(root)
            self._finish_later(node, root, LocalPhase.STUCK if stuck else LocalPhase.OUT)

    def _finish_later(self, node: SimNode, root: str, phase: LocalPhase) -> None:
        boot = node.boot
        delay = self.action_delay * (0.5 + self.rng.random())

        def finish() -> None:
            if node.boot == boot:
                self._set_phase(node, root, phase)
                self._kick(node, root)

        self._at(self.now + delay, finish)

    def _set_phase(self, node: SimNode, root: str, phase: LocalPhase) -> None:
        if phase is LocalPhase.STARTING:
            if self.last_holder.get(root, node.name) != node.name:
                self.moves += 1
            self.last_holder[root] = node.name
        node.phase[root] = phase
        self._check()
        self.call(node, LocalHierarchyChanged(root=root, phase=phase))

    # -- faults and operations ------------------------------------------------------------------

    def partition(self, groups: dict[str, int]) -> None:
        """Put nodes (and the witness) into groups; only members of one group talk."""
        self.group.update(groups)

    def heal(self) -> None:
        """One group, no cut path, no loss, no extra delay, the witness up."""
        self.group = dict.fromkeys(self.group, 0)
        self.cut_paths.clear()
        self.loss.clear()
        self.delay.clear()
        self.witness_up = True
        self.witness_reach = None

    def hang(self, name: str) -> None:
        """The daemon stops processing (SIGSTOP); its hierarchies stay as they are."""
        self.nodes[name].hung = True

    def resume(self, name: str) -> None:
        """The daemon continues and processes everything that queued up meanwhile."""
        node = self.nodes[name]
        if node.engine is None or not node.hung:
            return
        node.hung = False
        inbox, node.inbox = node.inbox, []
        for event in inbox:
            self.call(node, event)
            self._check()

    def crash(self, name: str) -> None:
        """Power loss: everything of the node is out of service at once."""
        node = self.nodes[name]
        node.engine = None
        node.hung = False
        node.boot += 1
        node.inbox.clear()
        node.last_feed = None
        node.remove_fails.clear()
        for root in node.phase:
            node.phase[root] = LocalPhase.OUT
            node.desired[root] = False

    def restart(self, name: str) -> None:
        """Boot the node: a new incarnation that runs nothing yet."""
        node = self.nodes[name]
        if node.engine is not None:
            return
        node.incarnation += 1
        now = self._local_now(node)
        node.engine = ClusterEngine(
            self.model,
            self.config,
            name,
            incarnation=node.incarnation,
            now=now,
            failed=frozenset(node.failed_marks),
        )
        self._run_outputs(node, node.engine.start(), now)

    def restart_daemon(self, name: str) -> None:
        """Restart only the daemon: its hierarchies keep running and its watchdog keeps ticking;
        the new daemon is told what runs (the resource engine's probes)."""
        node = self.nodes[name]
        node.engine = None
        node.hung = False
        node.inbox.clear()
        self.restart(name)
        for root, phase in node.phase.items():
            if phase is not LocalPhase.OUT:
                self.call(node, LocalHierarchyChanged(root=root, phase=phase))

    def fail_resource(self, name: str, root: str, *, remove_fails: bool = False) -> None:
        """Local recovery on ``name`` gives up on ``root``: it escalates and is taken out."""
        node = self.nodes[name]
        if node.engine is None:
            return
        node.failed_marks.add(root)
        if remove_fails:
            node.remove_fails.add(root)
        self.call(node, HierarchyEscalated(root=root))
        node.desired[root] = False
        self._kick(node, root)

    def fence(self, name: str) -> None:
        """Power the node off, then confirm it to every other node (``lifekit fence confirm``)."""
        self.crash(name)
        for other in self.nodes.values():
            if other.name != name:
                self.call(other, FenceConfirmed(node=name))

    def evidence(self, name: str, root: str) -> None:
        """Tell every other node that ``name`` no longer runs ``root`` (must be true)."""
        for other in self.nodes.values():
            if other.name != name:
                self.call(other, PeerOutOfServiceEvidence(node=name, root=root))

    # -- what a converged cluster must look like ------------------------------------------------

    def expected_placement(self, root: str) -> str | None:
        """Where ``root`` belongs by the ground truth of a healed, quiet cluster."""
        eligible = [
            name
            for name, node in self.nodes.items()
            if node.engine is not None
            and not node.hung
            and node.engine.quorate
            and root not in node.failed_marks
        ]
        hierarchy = self.model.hierarchies[root]
        return place(
            self.model.eligible_nodes(root),
            switchback=hierarchy.switchback,
            eligible=eligible,
            holders=self.running(root),
        )

    def converged(self) -> list[str]:
        """What differs from the converged state (empty: converged)."""
        problems = []
        for root in self.model.hierarchies:
            expected = self.expected_placement(root)
            holders = self.in_service(root)
            want = [expected] if expected is not None else []
            settled = expected is None or self.nodes[expected].phase[root] is LocalPhase.IN
            if holders != want or not settled:
                problems.append(f"{root}: expected on {want}, in service on {holders}")
        return problems


# ---------------------------------------------------------------------------------------------
# Tests of the simulator itself


def test_a_quiet_cluster_puts_each_hierarchy_on_its_first_node() -> None:
    model = make_model({"web": ("a", "b", "c"), "db": ("c", "b", "a")})
    net = Net(model, make_config("abc"))
    net.run(5.0)
    assert net.running("web") == ["a"]
    assert net.running("db") == ["c"]
    assert net.converged() == []


def test_the_invariant_check_catches_double_service() -> None:
    model = make_model({"web": ("a", "b")})
    net = Net(model, make_config("abc"), start=False)
    net.nodes["a"].phase["web"] = LocalPhase.IN
    net.nodes["b"].phase["web"] = LocalPhase.STUCK
    with pytest.raises(DoubleService, match="'web' possibly in service on"):
        net._check()


def test_a_hung_node_keeps_its_hierarchies_until_its_watchdog_fires() -> None:
    model = make_model({"web": ("a", "b", "c")})
    net = Net(model, make_config("abc"))
    net.run(3.0)
    assert net.running("web") == ["a"]
    net.hang("a")
    net.run(0.75)  # W = 1 s: the last feed was at most one heartbeat (0.2 s) before the hang
    assert net.nodes["a"].phase["web"] is LocalPhase.IN
    net.run(0.3)
    assert not net.nodes["a"].up  # the watchdog reset it
    assert net.in_service("web") in ([], ["b"])


def test_clocks_run_at_their_own_rates() -> None:
    model = make_model({"web": ("a", "b", "c")})
    net = Net(model, make_config("abc"), rates={"a": 1.0, "b": 1.1, "c": 1.05})
    net.run(2.0)
    assert net.nodes["b"].clock(2.0) - net.nodes["b"].clock(0.0) == pytest.approx(2.2)
    assert net.running("web") == ["a"]


def test_quorum_mode_names_are_a_contract() -> None:
    assert [mode.value for mode in QuorumMode] == ["majority", "witness", "storage", "none"]
