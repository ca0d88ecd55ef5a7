"""The resource model: what build_model accepts, and errors that name the resources involved."""

from __future__ import annotations

import itertools
import math

import pytest

from lifekit._model import (
    HierarchySpec,
    Outcome,
    Policy,
    RecoveryLimit,
    Resource,
    Result,
    State,
    Timeouts,
    build_model,
)
from lifekit.errors import ConfigError, LifekitError

NODES = ["n1", "n2", "n3"]


def _error(*resources: Resource, **kwargs: object) -> ConfigError:
    kwargs.setdefault("default_nodes", NODES)
    with pytest.raises(ConfigError) as info:
        build_model(resources, **kwargs)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------------------------------------
# Valid models


def test_members_come_children_first_with_parents_and_roots_indexed() -> None:
    model = build_model(
        [
            Resource("web", "app", depends_on=["db", "ip"]),
            Resource("ip", "ip"),
            Resource("db", "app", depends_on=["disk"]),
            Resource("disk", "fs"),
            Resource("batch", "app", depends_on=["db"]),
        ],
        default_nodes=NODES,
    )
    assert sorted(model.hierarchies) == ["batch", "web"]
    members = model.hierarchies["web"].members
    assert set(members) == {"web", "ip", "db", "disk"}
    assert members.index("disk") < members.index("db") < members.index("web")
    assert members.index("ip") < members.index("web")
    assert set(model.parents["db"]) == {"web", "batch"}
    assert model.parents["web"] == ()
    assert set(model.roots_of["disk"]) == {"web", "batch"}
    assert model.hierarchies["web"].nodes == tuple(NODES)


def test_a_resource_may_narrow_the_node_list() -> None:
    model = build_model(
        [Resource("db", "app", nodes=["n1", "n3"]), Resource("web", "app", depends_on=["db"])],
        {"web": HierarchySpec(nodes=NODES, rollback=False)},
    )
    assert model.eligible_nodes("web") == ("n1", "n3")
    assert model.hierarchies["web"].rollback is False


def test_the_model_is_immutable() -> None:
    model = build_model([Resource("db", "app", params={"port": 5432})], default_nodes=NODES)
    with pytest.raises(TypeError):
        model.resources["x"] = Resource("x", "app")  # type: ignore[index]
    with pytest.raises(TypeError):
        model.resources["db"].params["port"] = 1  # type: ignore[index]


def test_a_deep_chain_builds_without_recursion() -> None:
    resources = [
        Resource(f"c{i}", "app", depends_on=[f"c{i - 1}"] if i else []) for i in range(5000)
    ]
    model = build_model(reversed(resources), default_nodes=NODES)
    assert model.hierarchies["c4999"].members == tuple(f"c{i}" for i in range(5000))


# ---------------------------------------------------------------------------------------------
# Errors, each naming the resources


def test_a_cycle_is_reported_with_its_path() -> None:
    error = _error(
        Resource("a", "app", depends_on=["c"]),
        Resource("b", "app", depends_on=["a"]),
        Resource("c", "app", depends_on=["b"]),
        Resource("top", "app", depends_on=["a"]),  # above the cycle, not part of it
    )
    assert isinstance(error, ValueError)
    assert isinstance(error, LifekitError)
    (issue,) = error.issues
    path = str(issue).split("dependency cycle: ")[1].split(";")[0].split(" -> ")
    assert path[0] == path[-1]
    assert sorted(path[:-1]) == ["a", "b", "c"]
    # Each step of the path is a real dependency.
    for child_of, child in itertools.pairwise(path):
        assert {"a": "c", "b": "a", "c": "b"}[child_of] == child


def test_a_self_dependency_is_named() -> None:
    error = _error(Resource("a", "app", depends_on=["a"]))
    assert "resources.a.depends_on: a resource cannot depend on itself" in str(error)


def test_an_unknown_dependency_is_named_with_the_known_tags() -> None:
    error = _error(Resource("web", "app", depends_on=["dbb"]), Resource("db", "app"))
    assert "resources.web.depends_on: unknown resource 'dbb'" in str(error)
    assert "known tags: db, web" in str(error)


def test_a_duplicate_tag_is_named() -> None:
    error = _error(Resource("db", "app"), Resource("db", "fs"))
    assert "resources.db: duplicate tag (got 'db')" in str(error)


def test_a_dependency_listed_twice_is_named() -> None:
    error = _error(Resource("db", "app"), Resource("web", "app", depends_on=["db", "db"]))
    assert "resources.web.depends_on: 'db' is listed twice" in str(error)


def test_a_hierarchy_named_by_a_non_root_names_its_parents() -> None:
    error = _error(
        Resource("db", "app"),
        Resource("web", "app", depends_on=["db"]),
        hierarchies={"db": HierarchySpec(nodes=NODES)},
    )
    assert "hierarchies.db: 'db' is not a root: 'web' depend(s) on it" in str(error)


def test_a_hierarchy_named_by_an_unknown_tag() -> None:
    error = _error(Resource("db", "app"), hierarchies={"dbb": HierarchySpec(nodes=NODES)})
    assert "hierarchies.dbb: no resource has this tag" in str(error)


def test_a_shared_resource_under_roots_with_different_nodes_names_both_roots() -> None:
    error = _error(
        Resource("disk", "fs"),
        Resource("a", "app", depends_on=["disk"]),
        Resource("b", "app", depends_on=["disk"]),
        hierarchies={
            "a": HierarchySpec(nodes=["n1", "n2"]),
            "b": HierarchySpec(nodes=["n2", "n1"]),
        },
    )
    text = str(error)
    assert "resources.disk: reachable from roots with different node lists" in text
    assert "'a': ['n1', 'n2']" in text
    assert "'b': ['n2', 'n1']" in text


@pytest.mark.parametrize(
    "narrowed",
    [["n2", "n1"], ["n1", "n4"], ["n1", "n1"]],
    ids=["reordered", "added", "repeated"],
)
def test_a_resource_node_list_may_not_reorder_or_add_nodes(narrowed: list[str]) -> None:
    error = _error(Resource("db", "app", nodes=narrowed), Resource("web", "app", depends_on=["db"]))
    text = str(error)
    assert "resources.db.nodes: may only narrow its hierarchy's node list" in text
    assert repr(narrowed) in text
    assert "a subsequence of ['n1', 'n2', 'n3']" in text


def test_a_resource_node_list_may_not_be_empty() -> None:
    error = _error(Resource("db", "app", nodes=[]))
    assert "resources.db.nodes: no node may host this resource" in str(error)


def test_narrowings_that_leave_no_common_node_name_the_resources() -> None:
    error = _error(
        Resource("db", "app", nodes=["n1"]),
        Resource("ip", "ip", nodes=["n2", "n3"]),
        Resource("web", "app", depends_on=["db", "ip"]),
    )
    text = str(error)
    assert "hierarchies.web: no node may host every resource of the hierarchy" in text
    assert "'db': ['n1']" in text
    assert "'ip': ['n2', 'n3']" in text


def test_a_hierarchy_without_nodes() -> None:
    error = _error(Resource("db", "app"), default_nodes=[])
    assert "hierarchies.db.nodes: no node may host this hierarchy" in str(error)


def test_every_problem_is_reported_at_once() -> None:
    error = _error(
        Resource("db", "app"),
        Resource("db", "app"),
        Resource("web", "app", depends_on=["nope"]),
        hierarchies={"ghost": HierarchySpec(nodes=NODES)},
    )
    assert len(error.issues) == 3
    assert str(error).startswith("3 problems in the configuration:")


def test_the_location_prefix_is_used() -> None:
    error = _error(Resource("db", "app", depends_on=["x"]), where="cluster.toml")
    assert str(error).startswith("cluster.toml: resources.db.depends_on")


# ---------------------------------------------------------------------------------------------
# Policies and results


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_intervals_and_timeouts_must_be_finite_and_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="quickcheck_interval must be a finite number > 0"):
        Policy(quickcheck_interval=bad)
    with pytest.raises(ValueError, match="restore must be a finite number > 0"):
        Timeouts(restore=bad)


def test_recovery_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_recoveries must be >= 0, got -1"):
        RecoveryLimit(max_recoveries=-1)
    with pytest.raises(ValueError, match="window must be > 0 seconds, got 0"):
        RecoveryLimit(window=0)
    assert RecoveryLimit(max_recoveries=0).max_recoveries == 0


def test_results_are_typed() -> None:
    assert Result.ok() == Result(Outcome.OK, "")
    assert str(Result.soft_failure("pid gone")) == "soft_failure: pid gone"
    assert str(Result.not_running()) == "not_running"
    assert [r.is_failure for r in (Result.degraded("x"), Result.hard_failure("x"))] == [
        False,
        True,
    ]
    with pytest.raises(TypeError):
        Result("ok")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Result(Outcome.OK, None)  # type: ignore[arg-type]


def test_states_say_whether_they_are_in_service() -> None:
    assert {state for state in State if state.in_service} == {State.ISP, State.ISU}
