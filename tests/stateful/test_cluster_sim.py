"""Hypothesis drives 2-5 cluster engines over a simulated network and checks split brain.

Each example builds a cluster (majority or witness quorum, intelligent or automatic
switchback, 1-3 hierarchies with their own node priority lists, each node's clock at its own
rate within the configured margin) on :class:`tests.unit.test_cluster_net.Net`, then applies
random faults: partitions into arbitrary groups (the witness too), a path cut everywhere, loss
and extra delay on single directed links (so reordering, and one-way or non-transitive
contact), daemon hangs (hierarchies stay in service until the watchdog fires) and resumes,
crashes and restarts, resource failures (escalation, sometimes with a failing remove, which
blocks the hierarchy until the node is fenced), fencing, evidence, the witness going down, and
time passing.

Invariants:

* safety, after every simulated event, from the ground truth of what each node really has
  (starting, in, stopping or stuck, including on hung nodes): no hierarchy is ever possibly in
  service on two nodes;
* liveness, in the ``converge`` rule: once the network is healed, every daemon is running and
  no further fault happens for long enough, every hierarchy that can be placed is in service
  on exactly the node placement names, and nowhere else.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from lifekit._cluster import FailureMarksCleared, LocalPhase, QuorumMode
from lifekit._model import SwitchbackType
from tests.unit.test_cluster_net import PATHS, WITNESS, Net, make_config, make_model

NAMES = "abcde"
MARGIN = 0.1
#: Long enough for a healed cluster to settle: a takeover wait ((0.6 + 2.0) * 1.1 s), a restart,
#: the votes moving, and a planned move.
SETTLE = 9.0
WAITS = st.sampled_from([0.0, 0.1, 0.4, 1.0, 2.5, 4.0])


@st.composite
def clusters(draw: st.DrawFn) -> dict[str, object]:
    count = draw(st.integers(min_value=2, max_value=5))
    names = NAMES[:count]
    mode = draw(st.sampled_from([QuorumMode.MAJORITY, QuorumMode.WITNESS]))
    switchback = draw(st.sampled_from(list(SwitchbackType)))
    hierarchies = {}
    for index in range(draw(st.integers(min_value=1, max_value=3))):
        nodes = draw(st.permutations(names))
        size = draw(st.integers(min_value=min(2, count), max_value=count))
        hierarchies[f"h{index}"] = tuple(nodes[:size])
    rates = {name: draw(st.floats(min_value=1.0, max_value=1.0 + MARGIN)) for name in names}
    return {
        "names": names,
        "mode": mode,
        "switchback": switchback,
        "hierarchies": hierarchies,
        "rates": rates,
        "seed": draw(st.integers(min_value=0, max_value=2**32 - 1)),
    }


class ClusterSim(RuleBasedStateMachine):
    """Random faults against N simulated nodes; the simulator checks safety at every event."""

    def __init__(self) -> None:
        super().__init__()
        self.net: Net

    @initialize(cluster=clusters())
    def build(self, cluster: dict[str, object]) -> None:
        names = str(cluster["names"])
        model = make_model(
            cluster["hierarchies"],  # type: ignore[arg-type]
            switchback=cluster["switchback"],  # type: ignore[arg-type]
        )
        # A watchdog much longer than the deadtime: a takeover that does not wait it out is
        # caught red-handed while the hung holder still runs the hierarchy.
        config = make_config(
            names, quorum=cluster["mode"], clock_margin=MARGIN, watchdog_timeout=2.0
        )
        self.net = Net(model, config, seed=cluster["seed"], rates=cluster["rates"])  # type: ignore[arg-type]
        self.names = names
        self.roots = sorted(model.hierarchies)
        self.net.run(3.0)

    def node(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(self.names))

    def then(self, data: st.DataObject) -> None:
        """Let some time pass after a fault, so that faults and takeovers interleave."""
        self.net.run(data.draw(WAITS, label="then wait"))

    @rule(dt=st.sampled_from([0.05, 0.2, 0.5, 1.0, 2.0, 5.0]))
    def advance(self, dt: float) -> None:
        self.net.run(dt)

    # All the faults are one rule, so that hypothesis spends as many steps on faults in general
    # as on the holder-targeted ones below, on time, and on convergence.
    @rule(
        data=st.data(),
        kind=st.sampled_from(
            [
                "partition",
                "heal",
                "cut path",
                "lossy link",
                "slow link",
                "hang",
                "resume",
                "crash",
                "restart",
                "fence",
                "evidence",
                "witness down",
                "witness up",
                "cleanup",
            ]
        ),
    )
    def fault(self, data: st.DataObject, kind: str) -> None:
        net = self.net
        if kind == "partition":
            groups = {
                name: data.draw(st.integers(min_value=0, max_value=2), label=f"group of {name}")
                for name in [*self.names, WITNESS]
            }
            net.partition(groups)
        elif kind == "heal":
            net.heal()
        elif kind == "cut path":
            net.cut_paths.add(data.draw(st.sampled_from(PATHS), label="path"))
        elif kind == "lossy link":
            rate = data.draw(st.sampled_from([0.3, 0.8, 1.0]), label="loss")
            net.loss[(self.node(data), self.node(data))] = rate
        elif kind == "slow link":
            extra = data.draw(st.sampled_from([0.1, 0.5, 2.0]), label="extra delay")
            net.delay[(self.node(data), self.node(data))] = extra
        elif kind == "hang":
            net.hang(self.node(data))
        elif kind == "resume":
            net.resume(self.node(data))
        elif kind == "crash":
            net.crash(self.node(data))
        elif kind == "restart":
            net.restart(self.node(data))
        elif kind == "fence":
            net.fence(self.node(data))
        elif kind == "evidence":
            # Only true evidence is allowed: the node is powered off.
            name = self.node(data)
            if not net.nodes[name].up:
                net.evidence(name, data.draw(st.sampled_from(self.roots), label="hierarchy"))
        elif kind in ("witness down", "witness up"):
            net.witness_up = kind == "witness up"  # no effect in majority mode
        else:
            # The operator's ``lifekit cleanup``: marks persist across restarts until cleared.
            for node in net.nodes.values():
                node.failed_marks.clear()
                net.call(node, FailureMarksCleared())
        self.then(data)

    # The faults that matter most hit the node that runs a hierarchy; pick it directly.

    def holder(self, data: st.DataObject) -> tuple[str, str] | None:
        root = data.draw(st.sampled_from(self.roots), label="hierarchy")
        holders = self.net.in_service(root)
        return (holders[0], root) if holders else None

    @rule(
        data=st.data(),
        how=st.sampled_from(
            ["crash", "hang", "isolate", "isolate with witness", "fail", "fail, remove fails"]
        ),
    )
    def strike_holder(self, data: st.DataObject, how: str) -> None:
        found = self.holder(data)
        if found is not None:
            name, root = found
            if how == "crash":
                self.net.crash(name)
            elif how == "hang":
                self.net.hang(name)
            elif how.startswith("fail"):
                if self.net.nodes[name].phase[root] is LocalPhase.IN:
                    self.net.fail_resource(name, root, remove_fails=how != "fail")
            else:
                groups = dict.fromkeys([*self.names, WITNESS], 0)
                groups[name] = 1
                if how == "isolate with witness":
                    groups[WITNESS] = 1
                self.net.partition(groups)
            event(f"holder: {how}")
        self.then(data)

    @rule(data=st.data())
    def converge(self, data: st.DataObject) -> None:
        net = self.net
        net.heal()
        net.run(0.5)  # let running actions end: a remove that fails shows as stuck
        for name, node in net.nodes.items():
            if node.up and LocalPhase.STUCK in node.phase.values():
                net.fence(name)  # what the operator does for a blocked takeover
            # Powered-off nodes may stay off, and hung daemons may stay hung (their watchdog
            # fires): the survivors must still converge if they are a quorum.
            if data.draw(st.booleans(), label=f"{name} back"):
                net.resume(name)
                net.restart(name)
        net.run(SETTLE)
        assert net.converged() == [], self.describe()
        event("converged")

    def teardown(self) -> None:
        if hasattr(self, "net"):
            event(f"moves: {min(self.net.moves, 3)}{'+' if self.net.moves >= 3 else ''}")

    def describe(self) -> str:
        lines = [f"t={self.net.now:.2f}"]
        for name, node in self.net.nodes.items():
            engine = node.engine
            state = "down" if engine is None else ("quorate" if engine.quorate else "no quorum")
            phases = {root: phase.value for root, phase in node.phase.items()}
            lines.append(f"{name}: {state} {phases}")
            if engine is not None:
                for root, status in engine.snapshot().hierarchies.items():
                    lines.append(f"   {root}: {status}")
        return "\n".join(lines)


TestClusterSim = ClusterSim.TestCase
TestClusterSim.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
