"""The resource model: resources, hierarchies, policies, states and kit results.

Everything here is immutable data and pure validation; the engine reads it and never changes
it. :func:`build_model` is the one way to get a :class:`Model`: it checks the whole
configuration (unknown or duplicate tags, cycles, hierarchies named by a non-root, roots whose
node lists disagree over a shared resource, node lists a resource reorders or extends, node
lists that leave a hierarchy no node) and reports every problem at once, naming the resources
involved.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from lifekit.errors import ConfigError, ConfigIssue

__all__ = [
    "Action",
    "Hierarchy",
    "HierarchySpec",
    "Model",
    "Outcome",
    "Policy",
    "RecoveryLimit",
    "Resource",
    "Result",
    "State",
    "SwitchbackType",
    "Timeouts",
    "build_model",
]


class State(enum.Enum):
    """A resource's state on one node. The values are a monitoring contract: they never change."""

    #: In service, protected: running and monitored.
    ISP = "ISP"
    #: In service, unprotected: running (or possibly running), but degraded or not protected.
    ISU = "ISU"
    #: Out of service, unimpaired: not running here, able to be brought in service.
    OSU = "OSU"
    #: Out of service, failed: not running here because something failed.
    OSF = "OSF"
    #: Not probed yet.
    UNKNOWN = "UNKNOWN"

    @property
    def in_service(self) -> bool:
        """ISP or ISU."""
        return self in (State.ISP, State.ISU)


class Outcome(enum.Enum):
    """What a kit action found or did. The values are a monitoring contract."""

    #: Done / healthy.
    OK = "ok"
    #: Cleanly not running (a quickcheck's answer for a stopped resource; never an error).
    NOT_RUNNING = "not_running"
    #: Running, but degraded: the resource is ISU with the reason.
    DEGRADED = "degraded"
    #: Failed; a local ``recover`` may fix it.
    SOFT_FAILURE = "soft_failure"
    #: Failed; do not retry on this node (fail over).
    HARD_FAILURE = "hard_failure"
    #: Configuration error: never retry anywhere; alert the operator.
    FATAL = "fatal"


@attrs.frozen
class Result:
    """The typed result of a kit action: an :class:`Outcome` and a human reason.

    Build one with the constructors: ``Result.ok()``, ``Result.not_running("no pid")``,
    ``Result.degraded(...)``, ``Result.soft_failure(...)``, ``Result.hard_failure(...)``,
    ``Result.fatal(...)``.
    """

    outcome: Outcome = attrs.field(validator=attrs.validators.instance_of(Outcome))
    reason: str = attrs.field(default="", validator=attrs.validators.instance_of(str))

    @classmethod
    def ok(cls, reason: str = "") -> Result:
        """The action succeeded / the resource is healthy."""
        return cls(Outcome.OK, reason)

    @classmethod
    def not_running(cls, reason: str = "") -> Result:
        """The resource is cleanly not running."""
        return cls(Outcome.NOT_RUNNING, reason)

    @classmethod
    def degraded(cls, reason: str) -> Result:
        """Running but degraded (the resource becomes ISU with this reason)."""
        return cls(Outcome.DEGRADED, reason)

    @classmethod
    def soft_failure(cls, reason: str) -> Result:
        """Failed in a way a local ``recover`` may fix."""
        return cls(Outcome.SOFT_FAILURE, reason)

    @classmethod
    def hard_failure(cls, reason: str) -> Result:
        """Failed; do not retry on this node."""
        return cls(Outcome.HARD_FAILURE, reason)

    @classmethod
    def fatal(cls, reason: str) -> Result:
        """Configuration error: never retry, alert."""
        return cls(Outcome.FATAL, reason)

    @property
    def is_failure(self) -> bool:
        """Soft, hard or fatal."""
        return self.outcome in _FAILURES

    def __str__(self) -> str:
        return f"{self.outcome.value}: {self.reason}" if self.reason else self.outcome.value


_FAILURES = frozenset({Outcome.SOFT_FAILURE, Outcome.HARD_FAILURE, Outcome.FATAL})


class Action(enum.Enum):
    """The kit actions the engine asks for."""

    RESTORE = "restore"
    REMOVE = "remove"
    QUICKCHECK = "quickcheck"
    RECOVER = "recover"


class SwitchbackType(enum.Enum):
    """What a hierarchy does when a higher-priority node comes back after a failover."""

    #: Stay where it is (default).
    INTELLIGENT = "intelligent"
    #: Move back to the higher-priority node.
    AUTOMATIC = "automatic"


def _tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _optional_tuple(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    # Finite too: an infinite interval or timeout would put infinities (and NaN, via 0 * inf)
    # into the engine's deadline arithmetic.
    if not 0 < value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite number > 0 seconds, got {value!r}")


@attrs.frozen
class Timeouts:
    """Per-action timeouts, in seconds. A kit declares defaults and minimums; config overrides."""

    restore: float = attrs.field(default=60.0, validator=_positive)
    remove: float = attrs.field(default=60.0, validator=_positive)
    quickcheck: float = attrs.field(default=20.0, validator=_positive)
    recover: float = attrs.field(default=60.0, validator=_positive)

    def for_action(self, action: Action) -> float:
        """The timeout of one action."""
        value: float = getattr(self, action.value)
        return value


@attrs.frozen
class RecoveryLimit:
    """At most ``max_recoveries`` local recoveries within ``window`` seconds.

    A failure that would be one recovery too many escalates without calling ``recover``.
    """

    max_recoveries: int = 3
    window: float = 300.0

    def __attrs_post_init__(self) -> None:
        if self.max_recoveries < 0:
            raise ValueError(f"max_recoveries must be >= 0, got {self.max_recoveries!r}")
        if not self.window > 0:
            raise ValueError(f"window must be > 0 seconds, got {self.window!r}")


@attrs.frozen
class Policy:
    """How one resource is watched and what happens when it fails.

    :param quickcheck_interval: seconds between two quickchecks of the resource in service.
    :param timeouts: per-action timeouts (after kit minimums were applied).
    :param local_recovery: whether a failure first tries the kit's ``recover``.
    :param recovery_limit: the temporal recovery limit.
    :param failover: whether a failure that local recovery cannot fix takes the whole
        hierarchy out and asks for failover (``False``: only this resource and what depends on
        it go out of service here).
    """

    quickcheck_interval: float = attrs.field(default=10.0, validator=_positive)
    timeouts: Timeouts = Timeouts()
    local_recovery: bool = True
    recovery_limit: RecoveryLimit = RecoveryLimit()
    failover: bool = True


@attrs.frozen
class Resource:
    """One protected thing.

    :param tag: unique name in the cluster.
    :param kind: the kit that implements it (``app``, ``ip``, ...).
    :param params: kit parameters, already validated against the kit's schema.
    :param depends_on: tags of the resources this one needs (its children).
    :param policy: monitoring and recovery policy.
    :param nodes: optional narrowing of the hierarchy's node list (same order, fewer nodes).
    """

    tag: str
    kind: str
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    depends_on: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    policy: Policy = Policy()
    nodes: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_tuple)


@attrs.frozen
class Hierarchy:
    """A connected set of resources, named by its root's tag.

    :param root: the root resource's tag.
    :param nodes: the nodes that may host it, highest priority first.
    :param switchback: what happens when a higher-priority node returns.
    :param rollback: whether a failed bring-in-service takes back out what that attempt
        brought up (``False``: leave it running).
    :param members: every resource reachable from the root, children before parents.
    """

    root: str
    nodes: tuple[str, ...] = attrs.field(converter=_tuple)
    switchback: SwitchbackType = SwitchbackType.INTELLIGENT
    rollback: bool = True
    members: tuple[str, ...] = attrs.field(default=(), converter=_tuple)


@attrs.frozen
class Model:
    """A validated set of resources and hierarchies. Build it with :func:`build_model`."""

    resources: Mapping[str, Resource]
    hierarchies: Mapping[str, Hierarchy]
    #: tag -> tags of resources that depend on it (its parents).
    parents: Mapping[str, tuple[str, ...]]
    #: tag -> roots of the hierarchies it belongs to.
    roots_of: Mapping[str, tuple[str, ...]]

    def eligible_nodes(self, root: str) -> tuple[str, ...]:
        """The nodes that may host the hierarchy: its list, narrowed by every member's list."""
        nodes = self.hierarchies[root].nodes
        for tag in self.hierarchies[root].members:
            narrowed = self.resources[tag].nodes
            if narrowed is not None:
                nodes = tuple(node for node in nodes if node in narrowed)
        return nodes


@attrs.frozen
class HierarchySpec:
    """What a configuration says about one hierarchy before validation."""

    nodes: tuple[str, ...] = attrs.field(converter=_tuple)
    switchback: SwitchbackType = SwitchbackType.INTELLIGENT
    rollback: bool = True


def build_model(  # noqa: PLR0915 - one pass per rule, in the order the docs list them
    resources: Iterable[Resource],
    hierarchies: Mapping[str, HierarchySpec] | None = None,
    *,
    default_nodes: Sequence[str] = (),
    where: str = "model",
) -> Model:
    """Validate resources and hierarchy settings into a :class:`Model`.

    Every resource that no other resource depends on is a root and names a hierarchy; a root
    without an entry in ``hierarchies`` gets ``default_nodes``.

    :param where: prefix for error locations (a file name, for instance).
    :raises ConfigError: listing every problem found.
    """
    hierarchies = dict(hierarchies or {})
    issues: list[ConfigIssue] = []
    by_tag: dict[str, Resource] = {}
    for resource in resources:
        if not resource.tag or not isinstance(resource.tag, str):
            issues.append(
                ConfigIssue(
                    f"{where}: resource",
                    "a tag must be a non-empty string",
                    value=resource.tag,
                )
            )
            continue
        if resource.tag in by_tag:
            issues.append(
                ConfigIssue(
                    f"{where}: resources.{resource.tag}",
                    "duplicate tag",
                    value=resource.tag,
                    expected="give every resource a tag unique in the cluster",
                )
            )
            continue
        by_tag[resource.tag] = resource

    parents: dict[str, list[str]] = {tag: [] for tag in by_tag}
    for tag, resource in by_tag.items():
        seen: set[str] = set()
        for child in resource.depends_on:
            if child in seen:
                issues.append(
                    ConfigIssue(
                        f"{where}: resources.{tag}.depends_on",
                        f"{child!r} is listed twice",
                        expected="list each dependency once",
                    )
                )
                continue
            seen.add(child)
            if child == tag:
                issues.append(
                    ConfigIssue(
                        f"{where}: resources.{tag}.depends_on",
                        "a resource cannot depend on itself",
                        value=child,
                    )
                )
            elif child not in by_tag:
                issues.append(
                    ConfigIssue(
                        f"{where}: resources.{tag}.depends_on",
                        f"unknown resource {child!r}",
                        expected=_known_tags_hint(by_tag),
                    )
                )
            else:
                parents[child].append(tag)

    order = _topological_order(by_tag, parents)
    if len(order) < len(by_tag):
        cycle = _find_cycle(by_tag, set(by_tag) - set(order))
        issues.append(
            ConfigIssue(
                f"{where}: resources",
                "dependency cycle: " + " -> ".join(cycle),
                expected="a parent may depend on its children, never the other way round",
            )
        )
        raise ConfigError(issues)

    roots = [tag for tag in order if not parents[tag]]
    for name in hierarchies:
        if name not in by_tag:
            issues.append(
                ConfigIssue(
                    f"{where}: hierarchies.{name}",
                    "no resource has this tag",
                    expected="name a hierarchy by its root resource's tag; "
                    + _known_tags_hint(by_tag),
                )
            )
        elif parents[name]:
            issues.append(
                ConfigIssue(
                    f"{where}: hierarchies.{name}",
                    f"{name!r} is not a root: {', '.join(map(repr, parents[name]))} "
                    "depend(s) on it",
                    expected="name the hierarchy by its root, i.e. a resource nothing depends on",
                )
            )

    position = {tag: index for index, tag in enumerate(order)}
    built: dict[str, Hierarchy] = {}
    roots_of: dict[str, list[str]] = {tag: [] for tag in by_tag}
    for root in sorted(roots, key=position.__getitem__):
        spec = hierarchies.get(root) or HierarchySpec(nodes=tuple(default_nodes))
        members = sorted(_reachable(root, by_tag), key=position.__getitem__)
        if not spec.nodes:
            issues.append(
                ConfigIssue(
                    f"{where}: hierarchies.{root}.nodes",
                    "no node may host this hierarchy",
                    expected="list the nodes that may host it, highest priority first",
                )
            )
        elif len(set(spec.nodes)) != len(spec.nodes):
            issues.append(
                ConfigIssue(
                    f"{where}: hierarchies.{root}.nodes",
                    "a node is listed twice",
                    value=list(spec.nodes),
                    expected="list each node once, highest priority first",
                )
            )
        for tag in members:
            roots_of[tag].append(root)
        built[root] = Hierarchy(
            root=root,
            nodes=spec.nodes,
            switchback=spec.switchback,
            rollback=spec.rollback,
            members=members,
        )

    for tag, owners in roots_of.items():
        node_lists = {built[root].nodes for root in owners}
        if len(node_lists) > 1:
            described = "; ".join(f"{root!r}: {list(built[root].nodes)}" for root in owners)
            issues.append(
                ConfigIssue(
                    f"{where}: resources.{tag}",
                    f"reachable from roots with different node lists ({described})",
                    expected="give every hierarchy that shares this resource the same nodes",
                )
            )
        narrowed = by_tag[tag].nodes
        if narrowed is not None and owners:
            full = built[owners[0]].nodes
            if not _is_subsequence(narrowed, full):
                issues.append(
                    ConfigIssue(
                        f"{where}: resources.{tag}.nodes",
                        "may only narrow its hierarchy's node list, never add or reorder nodes",
                        value=list(narrowed),
                        expected=f"a subsequence of {list(full)}",
                    )
                )
            elif not narrowed:
                issues.append(
                    ConfigIssue(
                        f"{where}: resources.{tag}.nodes",
                        "no node may host this resource, so none may host its hierarchies",
                        value=[],
                        expected=f"at least one of {list(full)}, or no node list at all",
                    )
                )
    if not issues:
        for root, hierarchy in built.items():
            # Each narrowing may be valid alone and still leave no node for them all.
            narrowing = [tag for tag in hierarchy.members if by_tag[tag].nodes is not None]
            nodes = set(hierarchy.nodes)
            for tag in narrowing:
                nodes &= set(by_tag[tag].nodes or ())
            if not nodes:
                described = "; ".join(
                    f"{tag!r}: {list(by_tag[tag].nodes or ())}" for tag in narrowing
                )
                issues.append(
                    ConfigIssue(
                        f"{where}: hierarchies.{root}",
                        f"no node may host every resource of the hierarchy ({described})",
                        expected="give these resources' node lists at least one node in common",
                    )
                )
    if issues:
        raise ConfigError(issues)
    return Model(
        resources=MappingProxyType({tag: by_tag[tag] for tag in order}),
        hierarchies=MappingProxyType(built),
        parents=MappingProxyType({tag: tuple(parents[tag]) for tag in order}),
        roots_of=MappingProxyType({tag: tuple(roots_of[tag]) for tag in order}),
    )


def _known_tags_hint(by_tag: Mapping[str, Resource]) -> str:
    tags = sorted(by_tag)
    if not tags:
        return "no resources are defined"
    shown = ", ".join(tags[:10]) + (", ..." if len(tags) > 10 else "")
    return f"known tags: {shown}"


def _topological_order(
    by_tag: Mapping[str, Resource], parents: Mapping[str, list[str]]
) -> list[str]:
    """Children before parents (Kahn's algorithm, iterative: deep chains are fine)."""
    pending = {
        tag: len({child for child in res.depends_on if child in by_tag and child != tag})
        for tag, res in by_tag.items()
    }
    ready = deque(tag for tag, count in pending.items() if count == 0)
    order: list[str] = []
    while ready:
        tag = ready.popleft()
        order.append(tag)
        for parent in parents[tag]:
            pending[parent] -= 1
            if pending[parent] == 0:
                ready.append(parent)
    return order


def _find_cycle(by_tag: Mapping[str, Resource], stuck: set[str]) -> list[str]:
    """One cycle among the resources Kahn's algorithm could not order, as a path."""
    start = min(stuck)
    path = [start]
    index = {start: 0}
    current = start
    while True:
        current = next(
            child
            for child in sorted(by_tag[current].depends_on)
            if child in stuck and child != current  # a self-dependency is reported apart
        )
        if current in index:
            return [*path[index[current] :], current]
        index[current] = len(path)
        path.append(current)


def _reachable(root: str, by_tag: Mapping[str, Resource]) -> set[str]:
    seen = {root}
    stack = [root]
    while stack:
        for child in by_tag[stack.pop()].depends_on:
            # An unknown child is reported already; skipping it lets the other checks run.
            if child not in seen and child in by_tag:
                seen.add(child)
                stack.append(child)
    return seen


def _is_subsequence(short: Sequence[str], full: Sequence[str]) -> bool:
    remaining = iter(full)
    return all(any(node == candidate for candidate in remaining) for node in short)
