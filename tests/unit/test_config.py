"""The TOML configuration: defaults and their precedence, the model it builds, every error."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from lifekit import (
    HierarchySpec,
    Policy,
    RecoveryLimit,
    Resource,
    SwitchbackType,
    Timeouts,
    build_model,
)
from lifekit._config import (
    CONTROL_SOCKET_NAME,
    Config,
    default_run_dir,
    default_state_dir,
    load_config,
    parse_config,
)
from lifekit._registry import KitRegistry
from lifekit.errors import ConfigError, ConfigIssue, ParamError
from lifekit.kit import Kit, Param, Schema, hookimpl


class ServiceKit(Kit):
    """A kit with a known schema, defaults, minimums and a cross-parameter check."""

    kind = "svc"
    description = "A test service."
    schema = Schema(
        [
            Param("command", list, required=True, description="the argv to run"),
            Param("port", int, default=8000, unique=True, description="its TCP port"),
            Param(
                "mode",
                str,
                default="simple",
                choices=("simple", "forking"),
                description="how it runs",
            ),
        ]
    )
    default_timeouts = Timeouts(restore=30.0, remove=20.0, quickcheck=5.0, recover=40.0)
    minimum_timeouts = Timeouts(restore=2.0, remove=1.0, quickcheck=0.5, recover=2.0)
    default_quickcheck_interval = 7.0

    def validate(self, tag: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        if params["mode"] == "forking" and params["port"] < 1024:
            raise ParamError(tag, "port", params["port"], "a port >= 1024 in forking mode")
        return {**params, "validated": True}


class PlainKit(Kit):
    """A kit that declares nothing: the base class's defaults apply."""

    kind = "plain"
    description = "A test kit without parameters."


KITS = KitRegistry([ServiceKit(), PlainKit()])
NODE = '[node]\nname = "n1"\n'


def _issues(text: str, **kwargs: Any) -> list[ConfigIssue]:
    kwargs.setdefault("kits", KITS)
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.toml", **kwargs)
    return list(info.value.issues)


def _one(text: str, **kwargs: Any) -> ConfigIssue:
    issues = _issues(text, **kwargs)
    assert len(issues) == 1, issues
    return issues[0]


def _parse(text: str, **kwargs: Any) -> Config:
    kwargs.setdefault("kits", KITS)
    return parse_config(text, source="c.toml", **kwargs)


# --- a good file ---------------------------------------------------------------------------------

GOOD = """
config_version = 1

[node]
name = "n1"
state_dir = "state"
run_dir = "/tmp/lifekit-run"
log_file = "logs/n1.log"
log_level = "debug"
log_format = "json"
on_exit = "leave_running"
power = "lab"

[cluster]
nodes = ["n1", "n2", "n3"]

[defaults]
quickcheck_interval = 3
local_recovery = false
recovery_limit = { window = 60.0 }
timeouts = { remove = 15.0 }

[resources.db]
kind = "svc"
params = { command = ["db", "--serve"], port = 5432 }
timeouts = { restore = 90.0 }
recovery_limit = { max_recoveries = 5 }
nodes = ["n1", "n3"]

[resources.ip]
kind = "plain"
failover = false

[resources.web]
kind = "svc"
depends_on = ["db", "ip"]
params = { command = ["web"], mode = "forking", port = 8080 }
quickcheck_interval = 0.5
local_recovery = true

[resources.batch]
kind = "plain"

[hierarchies.web]
nodes = ["n1", "n2", "n3"]
switchback = "automatic"
rollback = false
"""


def test_good_file_builds_the_expected_model(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(GOOD)
    config = load_config(path, kits=KITS)

    svc_timeouts = Timeouts(restore=30.0, remove=15.0, quickcheck=5.0, recover=40.0)
    expected = build_model(
        [
            Resource(
                "db",
                "svc",
                params={"command": ["db", "--serve"], "port": 5432, "mode": "simple"}
                | {"validated": True},
                policy=Policy(
                    quickcheck_interval=3.0,
                    timeouts=Timeouts(restore=90.0, remove=15.0, quickcheck=5.0, recover=40.0),
                    local_recovery=False,
                    recovery_limit=RecoveryLimit(max_recoveries=5, window=60.0),
                    failover=True,
                ),
                nodes=["n1", "n3"],
            ),
            Resource(
                "ip",
                "plain",
                policy=Policy(
                    quickcheck_interval=3.0,
                    timeouts=Timeouts(remove=15.0),
                    local_recovery=False,
                    recovery_limit=RecoveryLimit(window=60.0),
                    failover=False,
                ),
            ),
            Resource(
                "web",
                "svc",
                params={"command": ["web"], "mode": "forking", "port": 8080, "validated": True},
                depends_on=["db", "ip"],
                policy=Policy(
                    quickcheck_interval=0.5,
                    timeouts=svc_timeouts,
                    local_recovery=True,
                    recovery_limit=RecoveryLimit(window=60.0),
                ),
            ),
            Resource(
                "batch",
                "plain",
                policy=Policy(
                    quickcheck_interval=3.0,
                    timeouts=Timeouts(remove=15.0),
                    local_recovery=False,
                    recovery_limit=RecoveryLimit(window=60.0),
                ),
            ),
        ],
        {
            "web": HierarchySpec(
                nodes=["n1", "n2", "n3"], switchback=SwitchbackType.AUTOMATIC, rollback=False
            )
        },
        default_nodes=["n1", "n2", "n3"],
    )
    assert config.model == expected
    assert config.model.hierarchies["batch"].nodes == ("n1", "n2", "n3")
    assert config.model.eligible_nodes("web") == ("n1", "n3")
    assert config.source == str(path)
    assert config.cluster_nodes == ("n1", "n2", "n3")
    assert config.version == 1
    node = config.node
    assert node.name == "n1"
    assert node.state_dir == tmp_path / "state"  # relative to the file's directory
    assert node.run_dir == Path("/tmp/lifekit-run")
    assert node.control_socket == Path("/tmp/lifekit-run") / CONTROL_SOCKET_NAME
    assert node.log_file == tmp_path / "logs" / "n1.log"
    assert (node.log_level, node.log_format, node.on_exit) == ("debug", "json", "leave_running")
    assert node.power == "lab"
    assert config.resources["web"]["depends_on"] == ["db", "ip"]
    assert config.kits is KITS


def test_minimal_file_gets_every_default() -> None:
    config = parse_config(
        '[resources.a]\nkind = "plain"\n', source="c.toml", kits=KITS, base_dir="/etc/lifekit"
    )
    name = socket.gethostname()
    assert config.node.name == name
    assert config.node.state_dir == default_state_dir(name)
    assert config.node.run_dir == default_run_dir()
    assert config.node.log_file is None
    assert (config.node.log_level, config.node.log_format) == ("info", "text")
    assert config.node.on_exit == "take_out"
    assert config.node.power == "refuse"
    assert config.cluster_nodes == (name,)
    assert config.model.hierarchies["a"].nodes == (name,)
    assert config.model.hierarchies["a"].switchback is SwitchbackType.INTELLIGENT
    assert config.model.hierarchies["a"].rollback is True
    assert config.model.resources["a"].policy == Policy()


def test_default_directories_for_root_and_for_users(monkeypatch: pytest.MonkeyPatch) -> None:
    # Which branch runs depends on who runs the suite; both are pinned here.
    if os.geteuid() == 0:
        assert default_state_dir("n1") == Path("/var/lib/lifekit/n1")
        assert default_run_dir() == Path("/run/lifekit")
    else:
        monkeypatch.setenv("XDG_STATE_HOME", "/somewhere")
        assert default_state_dir("n1") == Path("/somewhere/lifekit/n1")
        assert default_run_dir().name == f"lifekit-{os.getuid()}"


def test_empty_file_is_a_valid_empty_configuration() -> None:
    config = _parse(NODE)
    assert dict(config.model.resources) == {}
    assert dict(config.model.hierarchies) == {}


def test_mapping_input_is_checked_like_text() -> None:
    config = parse_config(
        {"node": {"name": "n1"}, "resources": {"a": {"kind": "plain"}}},
        source="api",
        kits=KITS,
    )
    assert list(config.model.resources) == ["a"]
    with pytest.raises(ConfigError) as info:
        parse_config({"resources": {"a": {"kind": 3}}}, source="api", kits=KITS, node_name="n1")
    assert [issue.where for issue in info.value.issues] == ["api: resources.a.kind"]


def test_node_name_argument_overrides_the_file() -> None:
    config = _parse(NODE + '[cluster]\nnodes = ["n1", "n2"]\n', node_name="n2")
    assert config.node.name == "n2"
    assert config.node.state_dir == default_state_dir("n2")


# --- policy precedence -------------------------------------------------------------------------


def _policy(text: str, tag: str = "a") -> Policy:
    return _parse(NODE + text).model.resources[tag].policy


def test_kit_defaults_apply_when_nothing_is_said() -> None:
    policy = _policy('[resources.a]\nkind = "svc"\nparams = { command = ["x"] }\n')
    assert policy.timeouts == ServiceKit.default_timeouts
    assert policy.quickcheck_interval == 7.0


def test_defaults_table_beats_kit_defaults_key_by_key() -> None:
    policy = _policy(
        "[defaults]\nquickcheck_interval = 2.5\ntimeouts = { restore = 10 }\n"
        "recovery_limit = { max_recoveries = 1 }\n"
        '[resources.a]\nkind = "svc"\nparams = { command = ["x"] }\n'
    )
    assert policy.quickcheck_interval == 2.5
    assert policy.timeouts == Timeouts(restore=10.0, remove=20.0, quickcheck=5.0, recover=40.0)
    assert policy.recovery_limit == RecoveryLimit(max_recoveries=1, window=300.0)


def test_resource_beats_defaults_key_by_key() -> None:
    policy = _policy(
        "[defaults]\nquickcheck_interval = 2.5\nfailover = false\n"
        "timeouts = { restore = 10, quickcheck = 3 }\n"
        "recovery_limit = { max_recoveries = 1, window = 10 }\n"
        '[resources.a]\nkind = "svc"\nparams = { command = ["x"] }\n'
        "quickcheck_interval = 1\nfailover = true\ntimeouts = { quickcheck = 4 }\n"
        "recovery_limit = { window = 20 }\n"
    )
    assert policy == Policy(
        quickcheck_interval=1.0,
        timeouts=Timeouts(restore=10.0, remove=20.0, quickcheck=4.0, recover=40.0),
        local_recovery=True,
        recovery_limit=RecoveryLimit(max_recoveries=1, window=20.0),
        failover=True,
    )


def test_a_timeout_equal_to_the_minimum_is_accepted() -> None:
    policy = _policy(
        '[resources.a]\nkind = "svc"\nparams = { command = ["x"] }\n'
        "timeouts = { quickcheck = 0.5 }\n"
    )
    assert policy.timeouts.quickcheck == 0.5


# --- errors: each names FILE: key, the bad value and what would be valid -----------------------


def test_toml_syntax_error_gives_line_and_column() -> None:
    issue = _one('[node]\nname = "n1"\nstate_dir = \n')
    assert issue.where == "c.toml: line 3, column 13"
    assert issue.problem.startswith("invalid TOML: ")
    assert issue.value == "state_dir = "
    assert "toml.io" in issue.expected


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml", kits=KITS)
    [issue] = info.value.issues
    assert issue.where == str(tmp_path / "absent.toml")
    assert "No such file or directory" in issue.problem


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[node]\nname = "n\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, kits=KITS)
    [issue] = info.value.issues
    assert issue.where == f"{path}: line 2"
    assert issue.problem == "the file is not UTF-8 text"


def test_unknown_top_level_key_suggests_the_closest() -> None:
    issue = _one(NODE + "[resource.a]\nkind = 'plain'\n")
    assert issue.where == "c.toml: resource"
    assert issue.problem == "unknown key"
    assert not issue.has_value()
    assert issue.expected == (
        "did you mean 'resources'? valid keys: config_version, node, cluster, defaults, "
        "resources, hierarchies"
    )


def test_unknown_keys_in_every_table() -> None:
    issues = _issues(
        NODE
        + "stat_dir = 'x'\n[cluster]\nnode = ['n1']\n"
        + "[defaults]\ntimeouts = { restor = 5 }\nrecovery_limit = { windows = 5 }\n"
        + "[resources.a]\nkind = 'plain'\nquickcheck_intervall = 5\n"
        + "[hierarchies.a]\nswitch_back = 'automatic'\n"
    )
    assert [(issue.where, issue.expected.split("?")[0]) for issue in issues] == [
        ("c.toml: node.stat_dir", "did you mean 'state_dir'"),
        ("c.toml: cluster.node", "did you mean 'nodes'"),
        ("c.toml: defaults.timeouts.restor", "did you mean 'restore'"),
        ("c.toml: defaults.recovery_limit.windows", "did you mean 'window'"),
        ("c.toml: resources.a.quickcheck_intervall", "did you mean 'quickcheck_interval'"),
        ("c.toml: hierarchies.a.switch_back", "did you mean 'switchback'"),
    ]
    assert issues[2].expected.endswith(
        "valid keys in [defaults.timeouts]: " + ("restore, remove, quickcheck, recover")
    )


def test_unknown_key_without_a_close_match_lists_valid_keys() -> None:
    issue = _one(NODE + "[resources.a]\nkind = 'plain'\nzzz = 1\n")
    assert issue.expected == (
        "valid keys in [resources.a]: kind, depends_on, nodes, params, quickcheck_interval, "
        "timeouts, local_recovery, failover, recovery_limit"
    )


@pytest.mark.parametrize(
    ("line", "where", "value", "expected"),
    [
        (
            "quickcheck_interval = 'ten'",
            "defaults.quickcheck_interval",
            "ten",
            "expected a number of seconds greater than 0",
        ),
        (
            "quickcheck_interval = true",
            "defaults.quickcheck_interval",
            True,
            "expected a number of seconds greater than 0",
        ),
        ("local_recovery = 'yes'", "defaults.local_recovery", "yes", "expected true or false"),
        ("failover = 1", "defaults.failover", 1, "expected true or false"),
        (
            "timeouts = 5",
            "defaults.timeouts",
            5,
            "expected a table ([defaults.timeouts] or timeouts = { ... })",
        ),
        (
            "recovery_limit = { max_recoveries = 1.5 }",
            "defaults.recovery_limit.max_recoveries",
            1.5,
            "expected an integer >= 0",
        ),
    ],
)
def test_wrong_types_name_the_expected_type(
    line: str, where: str, value: object, expected: str
) -> None:
    issue = _one(NODE + "[defaults]\n" + line + "\n")
    assert issue.where == f"c.toml: {where}"
    assert issue.problem.startswith("wrong type: ")
    assert issue.value == value
    assert type(issue.value) is type(value)
    assert issue.expected == expected


@pytest.mark.parametrize(
    ("line", "where", "value"),
    [
        ("quickcheck_interval = 0", "defaults.quickcheck_interval", 0),
        ("quickcheck_interval = -1.5", "defaults.quickcheck_interval", -1.5),
        ("quickcheck_interval = inf", "defaults.quickcheck_interval", math.inf),
        ("timeouts = { recover = 0 }", "defaults.timeouts.recover", 0),
        ("recovery_limit = { window = -3 }", "defaults.recovery_limit.window", -3),
        ("recovery_limit = { max_recoveries = -1 }", "defaults.recovery_limit.max_recoveries", -1),
    ],
)
def test_out_of_range_values(line: str, where: str, value: object) -> None:
    issue = _one(NODE + "[defaults]\n" + line + "\n")
    assert (issue.where, issue.problem, issue.value) == (f"c.toml: {where}", "out of range", value)
    assert issue.expected.startswith("expected ")


def test_resource_table_types() -> None:
    issues = _issues(
        NODE
        + "[resources.a]\nkind = 'plain'\ndepends_on = 'b'\nparams = 'x'\nnodes = 'n1'\n"
        + "[resources.b]\nkind = 'plain'\ndepends_on = ['a', 3]\n"
        + "[resources]\nc = 5\n"
    )
    assert [(issue.where, issue.value, issue.expected) for issue in issues] == [
        (
            "c.toml: resources.a.depends_on",
            "b",
            'expected an array of resource tags, e.g. ["db", "ip"]',
        ),
        ("c.toml: resources.a.nodes", "n1", 'expected an array of node names, e.g. ["n1", "n2"]'),
        (
            "c.toml: resources.a.params",
            "x",
            "expected a table ([resources.a.params] or params = { ... })",
        ),
        ("c.toml: resources.b.depends_on[1]", 3, "expected a resource tag (a string)"),
        ("c.toml: resources.c", 5, "expected a table ([resources.c])"),
    ]


def test_timeout_below_the_kits_minimum_names_key_value_and_minimum() -> None:
    issue = _one(
        NODE + '[resources.a]\nkind = "svc"\nparams = { command = ["x"] }\n'
        "timeouts = { restore = 1.5 }\n"
    )
    assert issue.where == "c.toml: resources.a.timeouts.restore"
    assert issue.problem == "below the 'svc' kit's minimum restore timeout of 2 s (resource 'a')"
    assert issue.value == 1.5
    assert issue.expected == "expected at least 2 s"


def test_defaults_below_a_kits_minimum_names_the_defaults_key_once() -> None:
    issue = _one(
        NODE + "[defaults]\ntimeouts = { quickcheck = 0.25 }\n"
        '[resources.a]\nkind = "svc"\nparams = { command = ["x"], port = 1 }\n'
        '[resources.b]\nkind = "svc"\nparams = { command = ["x"], port = 2 }\n'
        '[resources.c]\nkind = "plain"\n'
    )
    assert issue.where == "c.toml: defaults.timeouts.quickcheck"
    assert issue.problem == (
        "below the 'svc' kit's minimum quickcheck timeout of 0.5 s (resources 'a', 'b')"
    )
    assert issue.value == 0.25


def test_kit_schema_problems_are_located_in_the_file() -> None:
    issues = _issues(
        NODE + '[resources.a]\nkind = "svc"\nparams = { comand = ["x"], mode = "fork" }\n'
    )
    assert [(i.where, i.problem, i.value if i.has_value() else None) for i in issues] == [
        ("c.toml: resources.a.params.comand", "unknown parameter", None),
        ("c.toml: resources.a.params.mode", "invalid value", "fork"),
        ("c.toml: resources.a.params.command", "required parameter is missing", None),
    ]
    assert issues[0].expected == "did you mean 'command'? valid parameters: command, port, mode"
    assert issues[1].expected == "expected one of 'simple', 'forking'"
    assert issues[2].expected == "give a list of strings (the argv to run)"


def test_kit_validate_param_error_is_located_in_the_file() -> None:
    issue = _one(
        NODE + '[resources.a]\nkind = "svc"\nparams = { command = ["x"], mode = "forking", '
        "port = 80 }\n"
    )
    assert issue.where == "c.toml: resources.a.params.port"
    assert issue.value == 80
    assert issue.expected == "a port >= 1024 in forking mode"


def test_unique_params_are_checked_across_resources() -> None:
    issue = _one(
        NODE + '[resources.a]\nkind = "svc"\nparams = { command = ["x"] }\n'
        '[resources.b]\nkind = "svc"\nparams = { command = ["y"] }\n'
    )
    assert issue.where == "c.toml: resources.b.params.port"
    assert issue.problem == "must be unique among 'svc' resources but 'a' has it too"
    assert issue.value == 8000


def test_unknown_kind_lists_installed_kinds() -> None:
    issue = _one(NODE + '[resources.a]\nkind = "sv"\n')
    assert issue.where == "c.toml: resources.a.kind"
    assert issue.value == "sv"
    assert issue.expected == (
        "did you mean 'svc'? installed kinds: plain, svc; or install the kit's package "
        "(e.g. `pip install lifekit-sv`)"
    )


def test_missing_kind() -> None:
    issue = _one(NODE + "[resources.a]\ndepends_on = []\n")
    assert (issue.where, issue.problem) == ("c.toml: resources.a.kind", "missing")
    assert issue.expected == "every resource needs a kind; installed kinds: plain, svc"


def test_unknown_dependency_suggests_a_declared_tag() -> None:
    issue = _one(
        NODE + '[resources.web]\nkind = "plain"\ndepends_on = ["dbb"]\n'
        '[resources.db]\nkind = "plain"\n'
    )
    assert issue.where == "c.toml: resources.web.depends_on[0]"
    assert issue.value == "dbb"
    assert issue.expected == "did you mean 'db'? declared resources: web, db"


def test_invalid_tags_and_node_names() -> None:
    issues = _issues('[node]\nname = "n 1"\n[resources."a/b"]\nkind = "plain"\n')
    assert [(issue.where, issue.value) for issue in issues] == [
        ("c.toml: node.name", "n 1"),
        ('c.toml: resources."a/b"', "a/b"),
    ]
    assert issues[0].expected.startswith("expected 1 to 128 letters, digits")


def test_dotted_tags_are_quoted_in_locations() -> None:
    issue = _one(NODE + '[resources."ip-10.0.0.1"]\nkind = "svc"\nparams = {}\n')
    assert issue.where == 'c.toml: resources."ip-10.0.0.1".params.command'


def test_choices_suggest_the_closest() -> None:
    issues = _issues(
        NODE + 'log_level = "warn"\non_exit = "leave"\npower = "systemd"\n'
        '[resources.a]\nkind = "plain"\n[hierarchies.a]\nswitchback = "auto"\n'
    )
    assert [(issue.where, issue.value, issue.expected) for issue in issues] == [
        (
            "c.toml: node.log_level",
            "warn",
            "did you mean 'warning'? expected one of 'debug', 'info', 'warning', 'error', "
            "'critical'",
        ),
        (
            "c.toml: node.on_exit",
            "leave",
            "did you mean 'leave_running'? expected one of 'take_out', 'leave_running'",
        ),
        (
            "c.toml: node.power",
            "systemd",
            "did you mean 'system'? expected one of 'refuse', 'system', 'lab'",
        ),
        (
            "c.toml: hierarchies.a.switchback",
            "auto",
            "did you mean 'automatic'? expected one of 'intelligent', 'automatic'",
        ),
    ]


def test_config_version() -> None:
    issue = _one("config_version = 2\n" + NODE)
    assert (issue.where, issue.value) == ("c.toml: config_version", 2)
    assert issue.expected == "this lifekit reads config_version = 1"
    assert _one('config_version = "1"\n' + NODE).problem == "wrong type: a string"


def test_this_node_must_be_in_the_cluster() -> None:
    issue = _one(NODE + '[cluster]\nnodes = ["a", "b"]\n')
    assert issue.where == "c.toml: cluster.nodes"
    assert issue.problem == "this node, 'n1' ([node] name), is not in the cluster"
    assert issue.value == ["a", "b"]
    assert issue.expected == "add 'n1' to cluster.nodes, or run as one of a, b"
    from_flag = _one(NODE + '[cluster]\nnodes = ["n1"]\n', node_name="n2")
    assert from_flag.problem == "this node, 'n2' (given with --node), is not in the cluster"


def test_node_lists() -> None:
    issues = _issues(
        NODE + '[cluster]\nnodes = ["n1", "n2", "n2"]\n'
        '[resources.a]\nkind = "plain"\nnodes = ["n3"]\n'
        '[resources.b]\nkind = "plain"\nnodes = []\n'
        '[hierarchies.a]\nnodes = ["n1", "nn2"]\n'
    )
    assert [(issue.where, issue.problem, issue.value) for issue in issues] == [
        ("c.toml: cluster.nodes", "'n2' listed more than once", ["n1", "n2", "n2"]),
        ("c.toml: resources.a.nodes[0]", "not a cluster node", "n3"),
        ("c.toml: resources.b.nodes", "no nodes", []),
        ("c.toml: hierarchies.a.nodes[1]", "not a cluster node", "nn2"),
    ]
    assert issues[3].expected == "did you mean 'n2'? cluster nodes: n1, n2"


def test_structural_errors_come_from_the_model_with_the_file_name() -> None:
    issues = _issues(
        NODE + '[cluster]\nnodes = ["n1", "n2"]\n'
        '[resources.a]\nkind = "plain"\ndepends_on = ["b"]\n'
        '[resources.b]\nkind = "plain"\nnodes = ["n2", "n1"]\n'
        '[hierarchies.b]\nnodes = ["n1"]\n'
    )
    assert [(issue.where, issue.problem) for issue in issues] == [
        ("c.toml: hierarchies.b", "'b' is not a root: 'a' depend(s) on it"),
        (
            "c.toml: resources.b.nodes",
            "may only narrow its hierarchy's node list, never add or reorder nodes",
        ),
    ]
    cycle = _one(
        NODE + '[resources.a]\nkind = "plain"\ndepends_on = ["b"]\n'
        '[resources.b]\nkind = "plain"\ndepends_on = ["a"]\n'
    )
    assert cycle.where == "c.toml: resources"
    assert cycle.problem == "dependency cycle: a -> b -> a"


def test_every_problem_is_reported_at_once() -> None:
    issues = _issues(
        "colour = 1\n"
        + NODE
        + "[defaults]\nquickcheck_interval = 0\n"
        + '[resources.a]\nkind = "nope"\n'
        + '[resources.b]\nkind = "svc"\nparams = { command = "x" }\ndepends_on = ["zz"]\n'
        + '[hierarchies.q]\nrollback = "no"\n'
    )
    assert [issue.where for issue in issues] == [
        "c.toml: colour",
        "c.toml: defaults.quickcheck_interval",
        "c.toml: resources.a.kind",
        "c.toml: resources.b.depends_on[0]",
        "c.toml: resources.b.params.command",
        "c.toml: hierarchies.q.rollback",
        "c.toml: hierarchies.q",
    ]
    assert all(issue.where.startswith("c.toml: ") for issue in issues)


def test_kits_are_loaded_for_the_node_when_not_given() -> None:
    seen: list[str] = []

    class Plugin:
        @hookimpl
        def lifekit_kits(self, node_name: str) -> list[Kit]:
            seen.append(node_name)
            return [PlainKit()]

    config = parse_config(
        '[node]\nname = "n7"\n[resources.a]\nkind = "plain"\n',
        source="c.toml",
        plugins=[Plugin()],
    )
    assert seen == ["n7"]
    assert "plain" in config.kits
    assert config.model.resources["a"].kind == "plain"


def test_an_invalid_node_name_is_reported_once() -> None:
    issue = _one('[node]\nname = "-n1"\n[cluster]\nnodes = ["n1"]\n')
    assert (issue.where, issue.problem, issue.value) == (
        "c.toml: node.name",
        "invalid node name",
        "-n1",
    )
    flag = _one('[cluster]\nnodes = ["n1"]\n', node_name="n 1")
    assert (flag.where, flag.value) == ("c.toml: --node", "n 1")
