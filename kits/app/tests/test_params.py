"""The app kit's declarations: registration, schema, timeouts, and validation errors."""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import lifekit_app
import pluggy
import pytest
from lifekit_app import AppKit

from lifekit import hookspecs
from lifekit.errors import ConfigError, ParamError
from lifekit.kit import ActionContext, Kit, LocalHost, NodeContext, Outcome, Resource

COMMANDS = {"mode": "commands", "start": ["s"], "stop": ["t"], "check": ["c"]}
SUPERVISED = {"mode": "supervised", "command": ["sleep", "60"]}
SYSTEMD = {"mode": "systemd", "unit": "web.service"}


def test_registered_through_the_entry_point_and_pluggy() -> None:
    (entry,) = [
        ep for ep in importlib.metadata.entry_points(group="lifekit.kits") if ep.name == "app"
    ]
    module = entry.load()
    assert module is lifekit_app
    manager = pluggy.PluginManager("lifekit")
    manager.add_hookspecs(hookspecs)
    manager.register(module)
    manager.check_pending()
    first = manager.hook.lifekit_kits(node_name="n1")
    second = manager.hook.lifekit_kits(node_name="n2")
    assert [[type(kit) for kit in kits] for kits in first] == [[AppKit]]
    # Fresh objects per node: two nodes in one process must not share kit state.
    assert first[0][0] is not second[0][0]
    assert isinstance(first[0][0], Kit)
    assert first[0][0].kind == "app"


def test_schema_and_timeouts_are_valid() -> None:
    kit = AppKit()
    assert kit.schema.problems() == []
    assert kit.description
    assert all(param.description for param in kit.schema.params)
    assert kit.schema.by_name["mode"].required
    assert kit.schema.by_name["unit"].unique
    for action in ("restore", "remove", "quickcheck", "recover"):
        assert getattr(kit.default_timeouts, action) >= getattr(kit.minimum_timeouts, action)


@pytest.mark.parametrize(
    "params",
    [
        COMMANDS,
        {**COMMANDS, "recover": ["r"], "env": ["A=1", "B=x=y"], "cwd": "/srv"},
        SUPERVISED,
        {
            **SUPERVISED,
            "check": ["c"],
            "ready_check": ["r"],
            "env": ["A="],
            "cwd": "/",
            "stop_signal": "sigint",
            "stop_timeout": 3,
        },
        SYSTEMD,
        {**SYSTEMD, "systemctl": "/usr/bin/systemctl"},
    ],
)
def test_valid_params_pass_schema_and_validate(params: dict[str, Any]) -> None:
    kit = AppKit()
    checked = kit.schema.validate("web", params)
    assert kit.validate("web", checked) == checked
    # Nothing is filled in that the mode would reject: defaults live in the kit.
    assert set(checked) == set(params)


#: (params, parameter named in the error, bad value shown, words of the fix)
INVALID: list[tuple[dict[str, Any], str, Any, str]] = [
    ({"start": ["s"]}, "mode", None, "'commands', 'supervised', 'systemd'"),
    ({"mode": "daemon"}, "mode", "daemon", "one of 'commands'"),
    ({**COMMANDS, "check": None}, "check", None, "mode 'commands' needs 'check'"),
    ({"mode": "supervised"}, "command", None, "mode 'supervised' needs 'command'"),
    ({"mode": "systemd"}, "unit", None, "mode 'systemd' needs 'unit'"),
    ({**COMMANDS, "unit": "x.service"}, "unit", "x.service", "set mode = 'systemd'"),
    ({**SUPERVISED, "start": ["s"]}, "start", ["s"], "does not apply to mode 'supervised'"),
    ({**SYSTEMD, "env": ["A=1"]}, "env", ["A=1"], "remove it, or set mode = 'commands'"),
    ({**COMMANDS, "stop_signal": "TERM"}, "stop_signal", "TERM", "set mode = 'supervised'"),
    ({**COMMANDS, "ready_check": ["r"]}, "ready_check", ["r"], "mode = 'supervised'"),
    ({**SYSTEMD, "check": ["c"]}, "check", ["c"], "only to mode 'commands' or 'supervised'"),
    ({**COMMANDS, "start": []}, "start", [], "non-empty list of strings"),
    ({**SUPERVISED, "command": "sleep 60"}, "command", "sleep 60", "never run through a shell"),
    ({**SUPERVISED, "command": ["", "x"]}, "command", ["", "x"], "program as the first item"),
    ({**SUPERVISED, "command": ["a", 1]}, "command", ["a", 1], "list of strings"),
    ({**SUPERVISED, "stop_signal": "TERMINATE"}, "stop_signal", "TERMINATE", "such as 'TERM'"),
    ({**SUPERVISED, "stop_timeout": 0}, "stop_timeout", 0, "seconds > 0"),
    ({**SUPERVISED, "stop_timeout": -1.5}, "stop_timeout", -1.5, "seconds > 0"),
    ({**SUPERVISED, "env": ["FOO"]}, "env", ["FOO"], 'write "KEY=VALUE"'),
    ({**COMMANDS, "env": ["1X=2"]}, "env", ["1X=2"], "not starting with a digit"),
    ({**COMMANDS, "env": ["A=1", "A=2"]}, "env", ["A=1", "A=2"], "'A' is set twice"),
    ({**COMMANDS, "cwd": "srv/app"}, "cwd", "srv/app", "absolute directory path"),
    ({"mode": "systemd", "unit": "--force"}, "unit", "--force", "not start with '-'"),
    ({"mode": "systemd", "unit": "a b"}, "unit", "a b", "without spaces"),
    ({**SYSTEMD, "systemctl": ""}, "systemctl", "", "program name or path"),
    ({**COMMANDS, "startt": ["s"]}, "startt", ["s"], "not an app kit parameter"),
]


@pytest.mark.parametrize(("params", "param", "value", "fix"), INVALID)
def test_validate_names_tag_param_value_and_fix(
    params: dict[str, Any], param: str, value: Any, fix: str
) -> None:
    with pytest.raises(ParamError) as caught:
        AppKit().validate("web", params)
    error = caught.value
    assert (error.tag, error.param, error.value) == ("web", param, value)
    assert fix in error.expected
    message = str(error)
    assert "'web'" in message
    assert repr(param) in message
    assert repr(value) in message
    assert fix in message


def test_the_schema_reports_bad_values_with_the_same_checks() -> None:
    params = {**SUPERVISED, "stop_signal": "NOPE", "env": ["X"], "stopsignal": "TERM"}
    with pytest.raises(ConfigError) as caught:
        AppKit().schema.validate("web", params)
    text = str(caught.value)
    assert len(caught.value.issues) == 3
    assert "params.stop_signal" in text
    assert "'NOPE'" in text
    assert "such as 'TERM'" in text
    assert 'write "KEY=VALUE"' in text
    assert "did you mean 'stop_signal'?" in text


@pytest.mark.anyio
async def test_an_action_on_unvalidated_bad_params_is_fatal_not_an_exception(
    tmp_path: Path,
) -> None:
    node = NodeContext(
        name="t", host=LocalHost(), state_dir=tmp_path, log=logging.getLogger("test")
    )
    resource = Resource(tag="web", kind="app", params={"mode": "systemd"})
    kit = AppKit()
    for action in ("restore", "remove", "quickcheck", "recover"):
        result = await getattr(kit, action)(
            resource, ActionContext(node=node, tag="web", timeout=5)
        )
        assert result.outcome is Outcome.FATAL
        assert "'unit'" in result.reason
