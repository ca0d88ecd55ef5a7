"""The app kit's parameters: the schema, the checks of single values, and the cross-field rules.

Everything here is pure and fast (``lifekit check`` runs it). :func:`parse` turns a resource's
parameters into an :class:`AppConfig`, the one typed record the modes read, and raises
:class:`~lifekit.errors.ParamError` naming the resource, the parameter, the bad value and the fix.

Mode-specific parameters declare no schema default on purpose: a default would make every
parameter look given in every mode, and a parameter that does not apply to the chosen mode is
an error (``start`` in a supervised resource is a mistake worth reporting, not ignoring). Their
effective defaults live in :class:`AppConfig` and in the descriptions.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from lifekit.errors import ParamError
from lifekit.kit import Param, Schema

__all__ = [
    "DEFAULT_STOP_SIGNAL",
    "DEFAULT_STOP_TIMEOUT",
    "DEFAULT_SYSTEMCTL",
    "MODES",
    "MODE_PARAMS",
    "SCHEMA",
    "AppConfig",
    "parse",
]

#: The three ways the kit manages an application.
MODES = ("commands", "supervised", "systemd")

#: The parameters each mode accepts, besides ``mode``; the first ones listed are required.
MODE_PARAMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "commands": ("start", "stop", "check", "recover", "env", "cwd"),
        "supervised": (
            "command",
            "check",
            "ready_check",
            "env",
            "cwd",
            "stop_signal",
            "stop_timeout",
        ),
        "systemd": ("unit", "systemctl"),
    }
)
_REQUIRED: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"commands": ("start", "stop", "check"), "supervised": ("command",), "systemd": ("unit",)}
)

DEFAULT_STOP_SIGNAL = "TERM"
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_SYSTEMCTL = "systemctl"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ARGV_HINT = 'e.g. ["/usr/sbin/nginx", "-g", "daemon off;"]; it is never run through a shell'


def _argv_problem(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or not all(isinstance(arg, str) for arg in value):
        return f"expected a list of strings (an argv, {_ARGV_HINT})"
    if not value:
        return f"expected a non-empty list of strings (an argv, {_ARGV_HINT})"
    if not value[0]:
        return f"expected the program as the first item, not an empty string ({_ARGV_HINT})"
    return None


def _env_problem(value: Any) -> str | None:
    if not isinstance(value, list | tuple):
        return 'expected a list of "KEY=VALUE" strings, e.g. ["LANG=C.UTF-8", "PORT=8080"]'
    seen: set[str] = set()
    for entry in value:
        if not isinstance(entry, str) or "=" not in entry:
            return f'expected "KEY=VALUE" strings; entry {entry!r} has no "=" (write "KEY=VALUE")'
        key = entry.split("=", 1)[0]
        if not _ENV_NAME.match(key):
            return (
                f"expected variable names of letters, digits and '_' not starting with a digit; "
                f"entry {entry!r} names {key!r}"
            )
        if key in seen:
            return f"expected each variable once; {key!r} is set twice (keep one entry)"
        seen.add(key)
    return None


#: Signals by name without the "SIG" prefix ("TERM"); real-time signals beyond
#: SIGRTMIN/SIGRTMAX have no name and are not offered.
_SIGNALS: Mapping[str, signal.Signals] = MappingProxyType(
    {sig.name.removeprefix("SIG"): sig for sig in signal.Signals}
)


def _signal_problem(value: Any) -> str | None:
    if isinstance(value, str) and value.upper().removeprefix("SIG") in _SIGNALS:
        return None
    return "expected a signal name such as 'TERM', 'INT', 'QUIT' or 'HUP' (a 'SIG' prefix is fine)"


def _timeout_problem(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and math.isfinite(value) and value > 0:
        return None
    return "expected a number of seconds > 0, e.g. 10"


def _cwd_problem(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith("/"):
        return None
    return "expected an absolute directory path, e.g. '/srv/myapp'"


def _unit_problem(value: Any) -> str | None:
    if (
        isinstance(value, str)
        and value
        and not value.startswith("-")
        and not any(ch.isspace() or not ch.isprintable() for ch in value)
    ):
        return None
    return (
        "expected a systemd unit name without spaces that does not start with '-', "
        "e.g. 'nginx.service'"
    )


def _program_problem(value: Any) -> str | None:
    if isinstance(value, str) and value and not value.startswith("-"):
        return None
    return "expected a program name or path, e.g. 'systemctl' or '/usr/bin/systemctl'"


_CHECKS = {
    "start": _argv_problem,
    "stop": _argv_problem,
    "check": _argv_problem,
    "recover": _argv_problem,
    "command": _argv_problem,
    "ready_check": _argv_problem,
    "env": _env_problem,
    "cwd": _cwd_problem,
    "stop_signal": _signal_problem,
    "stop_timeout": _timeout_problem,
    "unit": _unit_problem,
    "systemctl": _program_problem,
}


def _argv(name: str, description: str) -> Param:
    return Param(name, list, item_type=str, check=_argv_problem, description=description)


#: The kit's parameter schema (see ``docs/app-kit.md`` for the full reference).
SCHEMA = Schema(
    [
        Param(
            "mode",
            str,
            required=True,
            choices=MODES,
            description="how the application is managed: 'commands' (start/stop/check argv), "
            "'supervised' (lifekit starts one process and watches its pid) or 'systemd' (a unit)",
        ),
        _argv("start", "commands: argv that starts the application and returns when it is up"),
        _argv("stop", "commands: argv that stops the application (must succeed when stopped)"),
        _argv(
            "check",
            "commands: argv whose exit status tells the state (0 running, 1/3/7 not running, "
            "190 degraded, ...); supervised: an extra health check run while the pid is alive",
        ),
        _argv("recover", "commands: argv for local recovery (default: stop, then start)"),
        _argv("command", "supervised: argv of the process to run in the foreground"),
        _argv(
            "ready_check",
            "supervised: argv polled during restore until it exits 0 (default: none)",
        ),
        Param(
            "env",
            list,
            item_type=str,
            check=_env_problem,
            description='commands, supervised: "KEY=VALUE" variables added to the environment',
        ),
        Param(
            "cwd",
            str,
            check=_cwd_problem,
            description="commands, supervised: absolute working directory of every command",
        ),
        Param(
            "stop_signal",
            str,
            check=_signal_problem,
            description=f"supervised: signal sent to the process group to stop it "
            f"(default {DEFAULT_STOP_SIGNAL!r})",
        ),
        Param(
            "stop_timeout",
            float,
            check=_timeout_problem,
            description=f"supervised: seconds to wait after stop_signal before SIGKILL "
            f"(default {DEFAULT_STOP_TIMEOUT:g})",
        ),
        Param(
            "unit",
            str,
            unique=True,
            check=_unit_problem,
            description="systemd: the unit to manage, e.g. 'nginx.service'",
        ),
        Param(
            "systemctl",
            str,
            check=_program_problem,
            description=f"systemd: the systemctl program (default {DEFAULT_SYSTEMCTL!r})",
        ),
    ]
)


def _argv_tuple(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _env_mapping(value: Any) -> Mapping[str, str] | None:
    if not value:
        return None
    return MappingProxyType(dict(entry.split("=", 1) for entry in value))


@attrs.frozen
class AppConfig:
    """One resource's parameters, checked and typed; what the modes read.

    ``None`` means "not given". ``env`` is ``None`` when no variable is added, so commands
    inherit lifekit's environment unchanged.
    """

    tag: str
    mode: str
    start: tuple[str, ...] | None = attrs.field(default=None, converter=_argv_tuple)
    stop: tuple[str, ...] | None = attrs.field(default=None, converter=_argv_tuple)
    check: tuple[str, ...] | None = attrs.field(default=None, converter=_argv_tuple)
    recover: tuple[str, ...] | None = attrs.field(default=None, converter=_argv_tuple)
    command: tuple[str, ...] | None = attrs.field(default=None, converter=_argv_tuple)
    ready_check: tuple[str, ...] | None = attrs.field(default=None, converter=_argv_tuple)
    env: Mapping[str, str] | None = attrs.field(default=None, converter=_env_mapping)
    cwd: str | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    unit: str | None = None
    systemctl: str = DEFAULT_SYSTEMCTL


def parse(tag: str, params: Mapping[str, Any]) -> AppConfig:
    """Check ``params`` as a whole and return them typed.

    Works on raw parameters as well as on ones the schema already checked: every value is
    checked again here, so a direct caller gets the same errors. ``None`` counts as not given
    (TOML has no null).

    :raises ParamError: the first problem found, naming the parameter, the value and the fix.
    """
    given = {name: value for name, value in params.items() if value is not None}
    mode = given.get("mode")
    if mode not in MODES:
        raise ParamError(tag, "mode", mode, "one of " + ", ".join(repr(m) for m in MODES))
    allowed = MODE_PARAMS[mode]
    for name, value in given.items():
        if name == "mode":
            continue
        if name not in _CHECKS:
            known = ", ".join(("mode", *allowed))
            raise ParamError(
                tag, name, value, f"not an app kit parameter; valid for mode {mode!r}: {known}"
            )
        if name not in allowed:
            owners = [m for m in MODES if name in MODE_PARAMS[m]]
            modes = " or ".join(repr(m) for m in owners)
            raise ParamError(
                tag,
                name,
                value,
                f"{name!r} does not apply to mode {mode!r} (only to mode {modes}); remove it, "
                f"or set mode = {owners[0]!r}",
            )
        problem = _CHECKS[name](value)
        if problem is not None:
            raise ParamError(tag, name, value, problem)
    for name in _REQUIRED[mode]:
        if name not in given:
            description = SCHEMA.by_name[name].description.split(": ", 1)[1]
            raise ParamError(
                tag, name, None, f"mode {mode!r} needs {name!r}: give it ({description})"
            )
    # The name was checked above, so the lookup cannot fail.
    stop_signal = _SIGNALS[
        given.get("stop_signal", DEFAULT_STOP_SIGNAL).upper().removeprefix("SIG")
    ]
    return AppConfig(
        tag=tag,
        mode=mode,
        start=given.get("start"),
        stop=given.get("stop"),
        check=given.get("check"),
        recover=given.get("recover"),
        command=given.get("command"),
        ready_check=given.get("ready_check"),
        env=given.get("env"),
        cwd=given.get("cwd"),
        stop_signal=stop_signal,
        stop_timeout=float(given.get("stop_timeout", DEFAULT_STOP_TIMEOUT)),
        unit=given.get("unit"),
        systemctl=given.get("systemctl", DEFAULT_SYSTEMCTL),
    )
