"""The TOML configuration file: reading it, checking every key, and building a :class:`Config`.

This module owns the file format documented in ``docs/config.md``: which tables and keys
exist, their types and defaults, how policies are resolved (the kit's defaults, then
``[defaults]``, then the resource's own keys), and how kit parameters are validated (the kit's
schema, then the kit's own ``validate``, then uniqueness across resources). Structural rules
(cycles, unknown tags, node lists) are :func:`lifekit.build_model`'s.

Checking never stops at the first problem: every problem in the file is collected and raised
as one :class:`~lifekit.errors.ConfigError`, each issue naming ``FILE: dotted.key``, the bad
value and what would be valid, so one ``lifekit check`` run shows them all.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import socket
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import attrs

from lifekit._model import (
    HierarchySpec,
    Model,
    Policy,
    RecoveryLimit,
    Resource,
    SwitchbackType,
    Timeouts,
    build_model,
)
from lifekit._registry import KitRegistry, load_kits
from lifekit._schema import unique_values
from lifekit.errors import ConfigError, ConfigIssue, ParamError
from lifekit.kit import Kit

__all__ = [
    "CONFIG_VERSION",
    "CONTROL_SOCKET_NAME",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ON_EXIT",
    "Config",
    "LogFormat",
    "NodeSettings",
    "OnExit",
    "default_control_socket",
    "default_run_dir",
    "default_state_dir",
    "load_config",
    "parse_config",
]

#: The only ``config_version`` this lifekit reads.
CONFIG_VERSION: Final = 1
#: The control socket's file name inside the node's ``run_dir``.
CONTROL_SOCKET_NAME: Final = "lifekit.sock"
#: Valid ``[node] log_level`` values (the names of the :mod:`logging` levels, lower case).
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
#: Valid ``[node] log_format`` values.
LOG_FORMATS: Final = ("text", "json")
#: Valid ``[node] on_exit`` values.
ON_EXIT: Final = ("take_out", "leave_running")
#: Valid ``[node] power`` values: who halts or reboots this node when lifekit must self-fence.
POWER: Final = ("refuse", "system", "lab")

#: What ``lifekit up`` does with its hierarchies when it stops: take them out of service,
#: parents first (default), or leave them running for the next start to adopt.
OnExit = Literal["take_out", "leave_running"]
#: Who carries out a halt or reboot: nobody (log only), this machine, or the lab's controller.
PowerSetting = Literal["refuse", "system", "lab"]
#: How log records are written: human-readable lines or one JSON object per line.
LogFormat = Literal["text", "json"]


def default_run_dir() -> Path:
    """``[node] run_dir`` when the file gives none: where the control socket lives.

    ``/run/lifekit`` for root; otherwise a per-user directory under the temporary directory,
    because an unprivileged user cannot create ``/run/lifekit``.
    """
    if os.geteuid() == 0:
        return Path("/run/lifekit")
    return Path(tempfile.gettempdir()) / f"lifekit-{os.getuid()}"


def default_state_dir(node_name: str) -> Path:
    """``[node] state_dir`` when the file gives none.

    ``/var/lib/lifekit/NAME`` for root; otherwise ``$XDG_STATE_HOME/lifekit/NAME`` (by default
    ``~/.local/state/lifekit/NAME``). The node's name is part of it so that several nodes on
    one host (a lab, a test) keep apart.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/lifekit") / node_name
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "lifekit" / node_name


def default_control_socket() -> Path:
    """Where ``lifekit status`` looks when no ``--socket`` is given."""
    return default_run_dir() / CONTROL_SOCKET_NAME


@attrs.frozen
class NodeSettings:
    """The ``[node]`` table: this node's name and where it keeps things.

    :param name: the node's name in the cluster (default: the host name).
    :param state_dir: a directory for node and kit state.
    :param run_dir: a directory for runtime files; the control socket lives here.
    :param log_file: where logs go (``None``: standard error).
    :param log_level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
    :param log_format: ``text`` or ``json``.
    :param on_exit: what stopping the node does to its hierarchies.
    :param power: who halts or reboots the node when it must self-fence: ``refuse`` (log
        only; the default, safe on a shared test kernel), ``system`` (this machine, for real)
        or ``lab`` (a lab node: its power loss, see :class:`lifekit.lab.LabPowerControl`).
    """

    name: str
    state_dir: Path
    run_dir: Path = attrs.field(factory=default_run_dir)
    log_file: Path | None = None
    log_level: str = "info"
    log_format: LogFormat = "text"
    on_exit: OnExit = "take_out"
    power: PowerSetting = "refuse"

    @property
    def control_socket(self) -> Path:
        """The local control socket ``lifekit status`` talks to."""
        return self.run_dir / CONTROL_SOCKET_NAME


@attrs.frozen
class Config:
    """A checked configuration file. Build it with :func:`load_config` or :func:`parse_config`.

    :param source: the file name used in messages.
    :param node: the ``[node]`` settings.
    :param cluster_nodes: every node of the cluster, in the order ``[cluster] nodes`` gives.
    :param model: the validated resources and hierarchies, policies resolved.
    :param resources: each resource's table as written in the file (for display).
    :param kits: the kits the parameters were validated with (the node runs these).
    :param version: the file's ``config_version``.
    """

    source: str
    node: NodeSettings
    cluster_nodes: tuple[str, ...]
    model: Model
    resources: Mapping[str, Mapping[str, Any]]
    kits: KitRegistry = attrs.field(eq=False, repr=False)
    version: int = CONFIG_VERSION


def load_config(
    path: str | os.PathLike[str],
    *,
    kits: KitRegistry | None = None,
    plugins: Iterable[object] = (),
    node_name: str | None = None,
) -> Config:
    """Read and check a TOML configuration file.

    Relative paths in the file (``state_dir``, ``run_dir``, ``log_file``) are relative to the
    file's directory.

    :param kits: the kits to validate against; ``None`` loads the installed ones (and
        ``plugins``) for the node.
    :param plugins: extra kit plugins (modules with ``@hookimpl`` functions) when ``kits`` is
        ``None``.
    :param node_name: this node's name, overriding ``[node] name`` (``lifekit up --node``).
    :raises ConfigError: every problem in the file; a file that cannot be read or is not
        valid TOML is one problem, with the line and column.
    """
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(
            [
                ConfigIssue(
                    source,
                    f"cannot read the configuration file: {exc.strerror or exc}",
                    expected="give the path of a readable TOML file",
                )
            ]
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [
                ConfigIssue(
                    f"{source}: line {line}",
                    "the file is not UTF-8 text",
                    expected="save the file as UTF-8, as TOML requires",
                )
            ]
        ) from exc
    return parse_config(
        text,
        source=source,
        kits=kits,
        plugins=plugins,
        node_name=node_name,
        base_dir=Path(source).absolute().parent,
    )


def parse_config(
    text_or_mapping: str | Mapping[str, Any],
    *,
    source: str,
    kits: KitRegistry | None = None,
    plugins: Iterable[object] = (),
    node_name: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Check a configuration given as TOML text or as an already parsed mapping.

    :param source: the name issues start with (a file name, for instance).
    :param base_dir: what relative paths are relative to (default: the working directory).
    :raises ConfigError: every problem found.
    """
    if isinstance(text_or_mapping, str):
        try:
            document: Mapping[str, Any] = tomllib.loads(text_or_mapping)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([_syntax_issue(source, text_or_mapping, exc)]) from exc
    else:
        document = text_or_mapping
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _Reader(source, base).read(document, kits=kits, plugins=plugins, node_name=node_name)


# --- the file's shape --------------------------------------------------------------------------

_TOP_KEYS = ("config_version", "node", "cluster", "defaults", "resources", "hierarchies")
_NODE_KEYS = (
    "name",
    "state_dir",
    "run_dir",
    "log_file",
    "log_level",
    "log_format",
    "on_exit",
    "power",
)
_CLUSTER_KEYS = ("nodes",)
_POLICY_KEYS = ("quickcheck_interval", "timeouts", "local_recovery", "failover", "recovery_limit")
_RESOURCE_KEYS = ("kind", "depends_on", "nodes", "params", *_POLICY_KEYS)
_HIERARCHY_KEYS = ("nodes", "switchback", "rollback")
_ACTIONS = ("restore", "remove", "quickcheck", "recover")
_LIMIT_KEYS = ("max_recoveries", "window")

# Node names and tags end up in logs, file names and the status document: keep them to
# characters that need no quoting anywhere. Dots are allowed (host names, IP-named tags).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NAME_RULE = (
    "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. 'web-1'"
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INDEX = re.compile(r"\[\d+\]")
_SECONDS = "a number of seconds greater than 0"


class _Path(tuple[str, ...]):
    """A key path in the file, shown as a TOML dotted key (quoted where TOML needs it)."""

    __slots__ = ()

    def __str__(self) -> str:
        text = ""
        for part in self:
            if _INDEX.fullmatch(part):
                text += part
            else:
                key = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
                text += f".{key}" if text else key
        return text

    def item(self, position: int) -> _Path:
        """The path of one array item: ``nodes[2]``."""
        return _Path((*self, f"[{position}]"))

    def __truediv__(self, key: str) -> _Path:
        return _Path((*self, key))


_ROOT = _Path()

#: A policy layer: flat key ("quickcheck_interval", "timeouts.restore", ...) -> (value, where).
_Layer = dict[str, tuple[Any, _Path]]

#: A timeout below its kit's minimum: (where, kind, action, value, minimum).
_Minimum = tuple[_Path, str, str, float, float]

_NOTHING: Any = object()


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    """``"did you mean 'x'? "`` for the closest option, or ``""``.

    An option the word starts (``leave`` for ``leave_running``) counts as close: difflib's
    ratio alone misses shortened words.
    """
    close = [option for option in options if option.startswith(word)] if word else []
    if len(close) != 1:
        close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _syntax_issue(source: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigIssue:
    """The one issue for a TOML syntax error, with the line and column and the line's text."""
    message = str(exc)
    found = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if found is None:
        # tomllib reports "end of document" without a position for some errors.
        return ConfigIssue(
            source, f"invalid TOML: {message}", expected="fix the TOML syntax (https://toml.io)"
        )
    line, column = int(found[1]), int(found[2])
    reason = message[: found.start()].strip()
    lines = text.splitlines()
    issue_text = lines[line - 1] if 0 < line <= len(lines) else ""
    return ConfigIssue(
        f"{source}: line {line}, column {column}",
        f"invalid TOML: {reason}",
        value=issue_text,
        expected="fix the TOML syntax (https://toml.io)",
    )


class _Reader:
    """One pass over a parsed document, collecting every issue."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []
        self.node_name_ok = True

    # --- reporting ---

    def where(self, path: _Path) -> str:
        return f"{self.source}: {path}"

    def add(self, path: _Path, problem: str, *, value: Any = _NOTHING, expected: str = "") -> None:
        if value is _NOTHING:
            self.issues.append(ConfigIssue(self.where(path), problem, expected=expected))
        else:
            self.issues.append(
                ConfigIssue(self.where(path), problem, value=value, expected=expected)
            )

    def wrong_type(self, path: _Path, value: object, wanted: str) -> None:
        self.add(
            path, f"wrong type: {_type_name(value)}", value=value, expected=f"expected {wanted}"
        )

    # --- typed readers: each returns _NOTHING after reporting a bad value ---

    def table(self, parent: Mapping[str, Any], key: str, path: _Path) -> Mapping[str, Any]:
        """A sub-table (empty when absent or invalid)."""
        value = parent.get(key, {})
        if not isinstance(value, Mapping):
            self.wrong_type(path, value, f"a table ([{path}] or {key} = {{ ... }})")
            return {}
        return value

    def known_keys(self, table: Mapping[str, Any], valid: Sequence[str], path: _Path) -> None:
        for key in table:
            if key in valid:
                continue
            hint = _did_you_mean(str(key), valid)
            self.add(
                path / str(key),
                "unknown key",
                expected=f"{hint}valid keys{f' in [{path}]' if path else ''}: " + ", ".join(valid),
            )

    def string(self, value: Any, path: _Path) -> Any:
        if not isinstance(value, str):
            self.wrong_type(path, value, "a string")
            return _NOTHING
        if not value:
            self.add(path, "must not be empty", value=value, expected="expected a non-empty string")
            return _NOTHING
        return value

    def name(self, value: Any, path: _Path, what: str) -> Any:
        if not isinstance(value, str):
            self.wrong_type(path, value, f"a {what} (a string)")
            return _NOTHING
        if not _NAME.fullmatch(value):
            self.add(path, f"invalid {what}", value=value, expected=f"expected {_NAME_RULE}")
            return _NOTHING
        return value

    def choice(self, value: Any, path: _Path, choices: Sequence[str]) -> Any:
        listed = ", ".join(repr(choice) for choice in choices)
        if not isinstance(value, str):
            self.wrong_type(path, value, f"one of {listed}")
            return _NOTHING
        if value not in choices:
            hint = _did_you_mean(value, choices)
            self.add(path, "invalid value", value=value, expected=f"{hint}expected one of {listed}")
            return _NOTHING
        return value

    def boolean(self, value: Any, path: _Path) -> Any:
        if not isinstance(value, bool):
            self.wrong_type(path, value, "true or false")
            return _NOTHING
        return value

    def seconds(self, value: Any, path: _Path) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(path, value, _SECONDS)
            return _NOTHING
        if not (math.isfinite(value) and value > 0):
            self.add(path, "out of range", value=value, expected=f"expected {_SECONDS}")
            return _NOTHING
        return value

    def count(self, value: Any, path: _Path) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(path, value, "an integer >= 0")
            return _NOTHING
        if value < 0:
            self.add(path, "out of range", value=value, expected="expected an integer >= 0")
            return _NOTHING
        return value

    def path(self, value: Any, path: _Path) -> Any:
        text = self.string(value, path)
        if text is _NOTHING:
            return _NOTHING
        return self.base_dir / text

    def node_list(
        self, value: Any, path: _Path, *, known: Sequence[str] = (), empty: str
    ) -> tuple[str, ...] | None:
        """An array of distinct node names (each in ``known`` when that is given).

        Reports every bad item and returns the good ones, so later checks see what could be
        read rather than repeating the problem; ``None`` when nothing usable is left.

        :param empty: the fix to suggest for an empty array.
        """
        if not isinstance(value, list | tuple):
            self.wrong_type(path, value, 'an array of node names, e.g. ["n1", "n2"]')
            return None
        if not value:
            self.add(path, "no nodes", value=[], expected=empty)
            return None
        good: list[str] = []
        for index, item in enumerate(value):
            if self.name(item, path.item(index), "node name") is _NOTHING:
                continue
            if known and item not in known:
                hint = _did_you_mean(item, known)
                self.add(
                    path.item(index),
                    "not a cluster node",
                    value=item,
                    expected=f"{hint}cluster nodes: {', '.join(known)}",
                )
                continue
            good.append(item)
        duplicated = sorted({item for item in good if good.count(item) > 1})
        if duplicated:
            self.add(
                path,
                f"{', '.join(map(repr, duplicated))} listed more than once",
                value=list(value),
                expected="list each node once, highest priority first",
            )
        return tuple(dict.fromkeys(good)) or None

    # --- the document ---

    def read(
        self,
        document: Mapping[str, Any],
        *,
        kits: KitRegistry | None,
        plugins: Iterable[object],
        node_name: str | None,
    ) -> Config:
        self.known_keys(document, _TOP_KEYS, _ROOT)
        version = document.get("config_version", CONFIG_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            self.wrong_type(_ROOT / "config_version", version, f"the integer {CONFIG_VERSION}")
        elif version != CONFIG_VERSION:
            self.add(
                _ROOT / "config_version",
                "unsupported version",
                value=version,
                expected=f"this lifekit reads config_version = {CONFIG_VERSION}",
            )
        node_table = self.table(document, "node", _ROOT / "node")
        node = self.read_node(node_table, node_name)
        if node_name is not None:
            origin = "given with --node"
        elif "name" in node_table:
            origin = "[node] name"
        else:
            origin = "the host name; set [node] name or pass --node NAME"
        cluster_nodes = self.read_cluster(
            self.table(document, "cluster", _ROOT / "cluster"), node, origin=origin
        )
        if kits is None:
            kits = load_kits(node_name=node.name, plugins=plugins)
        defaults = self.read_policy(
            self.table(document, "defaults", _ROOT / "defaults"), _ROOT / "defaults"
        )
        raw = self.table(document, "resources", _ROOT / "resources")
        resources = self.read_resources(raw, defaults, kits, cluster_nodes)
        specs = self.read_hierarchies(
            self.table(document, "hierarchies", _ROOT / "hierarchies"), cluster_nodes
        )
        model: Model | None = None
        try:
            model = build_model(resources, specs, default_nodes=cluster_nodes, where=self.source)
        except ConfigError as exc:
            self.issues.extend(exc.issues)
        if self.issues or model is None:
            raise ConfigError(list(dict.fromkeys(self.issues)))
        return Config(
            source=self.source,
            node=node,
            cluster_nodes=cluster_nodes,
            model=model,
            resources=MappingProxyType({tag: MappingProxyType(dict(raw[tag])) for tag in raw}),
            kits=kits,
            version=CONFIG_VERSION,
        )

    def read_node(self, table: Mapping[str, Any], override: str | None) -> NodeSettings:
        path = _ROOT / "node"
        self.known_keys(table, _NODE_KEYS, path)
        if override is not None:
            name = self.name(override, _Path(("--node",)), "node name")
        elif "name" in table:
            name = self.name(table["name"], path / "name", "node name")
        else:
            name = socket.gethostname()
            if not _NAME.fullmatch(name):
                self.add(
                    path / "name",
                    "the host name cannot be the node name",
                    value=name,
                    expected=f"set [node] name: {_NAME_RULE}",
                )
                name = _NOTHING
        self.node_name_ok = name is not _NOTHING
        if not self.node_name_ok:
            name = "invalid-node-name"  # keeps checking the rest; the issue is recorded

        def get(key: str, read: Any, default: Any) -> Any:
            if key not in table:
                return default
            value = read(table[key], path / key)
            return default if value is _NOTHING else value

        return NodeSettings(
            name=name,
            state_dir=get("state_dir", self.path, None) or default_state_dir(name),
            run_dir=get("run_dir", self.path, None) or default_run_dir(),
            log_file=get("log_file", self.path, None),
            log_level=get("log_level", lambda v, p: self.choice(v, p, LOG_LEVELS), "info"),
            log_format=get("log_format", lambda v, p: self.choice(v, p, LOG_FORMATS), "text"),
            on_exit=get("on_exit", lambda v, p: self.choice(v, p, ON_EXIT), "take_out"),
            power=get("power", lambda v, p: self.choice(v, p, POWER), "refuse"),
        )

    def read_cluster(
        self, table: Mapping[str, Any], node: NodeSettings, *, origin: str
    ) -> tuple[str, ...]:
        """``[cluster] nodes`` (default: this node alone), which must include this node."""
        path = _ROOT / "cluster"
        self.known_keys(table, _CLUSTER_KEYS, path)
        if "nodes" not in table:
            return (node.name,)
        nodes = self.node_list(
            table["nodes"],
            path / "nodes",
            empty='list every node of the cluster, e.g. nodes = ["n1", "n2"]',
        )
        if nodes is None:
            return (node.name,)
        if self.node_name_ok and node.name not in nodes:
            self.add(
                path / "nodes",
                f"this node, {node.name!r} ({origin}), is not in the cluster",
                value=list(nodes),
                expected=f"add {node.name!r} to cluster.nodes, or run as one of "
                + ", ".join(nodes),
            )
        return tuple(nodes)

    def read_policy(self, table: Mapping[str, Any], path: _Path) -> _Layer:
        """The policy keys of ``[defaults]`` or of one resource, checked, as a flat layer."""
        layer: _Layer = {}
        if "quickcheck_interval" in table:
            value = self.seconds(table["quickcheck_interval"], path / "quickcheck_interval")
            if value is not _NOTHING:
                layer["quickcheck_interval"] = (value, path / "quickcheck_interval")
        for key in ("local_recovery", "failover"):
            if key in table:
                value = self.boolean(table[key], path / key)
                if value is not _NOTHING:
                    layer[key] = (value, path / key)
        if "timeouts" in table:
            timeouts = self.table(table, "timeouts", path / "timeouts")
            self.known_keys(timeouts, _ACTIONS, path / "timeouts")
            for action in _ACTIONS:
                if action in timeouts:
                    value = self.seconds(timeouts[action], path / "timeouts" / action)
                    if value is not _NOTHING:
                        layer[f"timeouts.{action}"] = (value, path / "timeouts" / action)
        if "recovery_limit" in table:
            limit_path = path / "recovery_limit"
            limit = self.table(table, "recovery_limit", limit_path)
            self.known_keys(limit, _LIMIT_KEYS, limit_path)
            if "max_recoveries" in limit:
                value = self.count(limit["max_recoveries"], limit_path / "max_recoveries")
                if value is not _NOTHING:
                    layer["recovery_limit.max_recoveries"] = (
                        value,
                        limit_path / "max_recoveries",
                    )
            if "window" in limit:
                value = self.seconds(limit["window"], limit_path / "window")
                if value is not _NOTHING:
                    layer["recovery_limit.window"] = (value, limit_path / "window")
        return layer

    def read_resources(
        self,
        table: Mapping[str, Any],
        defaults: _Layer,
        kits: KitRegistry,
        cluster_nodes: Sequence[str],
    ) -> list[Resource]:
        """Every resource, with what could be checked of it; issues for the rest."""
        resources: list[Resource] = []
        validated: list[tuple[str, str, Mapping[str, Any]]] = []
        below_minimum: dict[_Minimum, list[str]] = {}
        tags = [str(tag) for tag in table]
        for tag, entry in table.items():
            path = _ROOT / "resources" / str(tag)
            if self.name(tag, path, "resource tag") is _NOTHING:
                continue
            if not isinstance(entry, Mapping):
                self.wrong_type(path, entry, f"a table ([resources.{tag}])")
                continue
            self.known_keys(entry, _RESOURCE_KEYS, path)
            kind = self.read_kind(entry, path, kits)
            kit = kits.get(kind) if kind is not _NOTHING else None
            depends_on = self.depends_on(entry.get("depends_on", []), path / "depends_on", tags)
            nodes = None
            if "nodes" in entry:
                nodes = self.node_list(
                    entry["nodes"],
                    path / "nodes",
                    known=cluster_nodes,
                    empty="leave nodes out to use the hierarchy's list, or narrow it",
                )
            params_table = self.table(entry, "params", path / "params")
            params: Mapping[str, Any] = dict(params_table)
            if kit is not None:
                checked = self.kit_params(kit, str(tag), params_table, path)
                if checked is not None:
                    params = checked
                    validated.append((str(tag), kit.kind, checked))
            layer = self.read_policy(entry, path)
            policy = self.resolve_policy(str(tag), kit, layer, defaults, below_minimum)
            resources.append(
                Resource(
                    str(tag),
                    kind if kind is not _NOTHING else "",
                    params=params,
                    depends_on=depends_on,
                    policy=policy,
                    nodes=nodes,
                )
            )
        for key, users in below_minimum.items():
            self.below_minimum(key, users)
        prefixes = {f"resource {tag!r}: ": _ROOT / "resources" / tag for tag, _, _ in validated}
        for issue in unique_values(lambda kind: kits.get(kind).schema, validated):
            self.issues.append(self.relocate(issue, prefixes))
        return resources

    def below_minimum(self, key: _Minimum, tags: Sequence[str]) -> None:
        """A timeout below its kit's minimum, at the key that set it."""
        where, kind, action, value, minimum = key
        users = ", ".join(map(repr, tags))
        self.add(
            where,
            f"below the {kind!r} kit's minimum {action} timeout of {minimum:g} s "
            f"(resource{'s' if len(tags) > 1 else ''} {users})",
            value=value,
            expected=f"expected at least {minimum:g} s",
        )

    def read_kind(self, entry: Mapping[str, Any], path: _Path, kits: KitRegistry) -> Any:
        installed = sorted(kits.kits)
        listed = ", ".join(installed) or "none"
        if "kind" not in entry:
            self.add(
                path / "kind",
                "missing",
                expected=f"every resource needs a kind; installed kinds: {listed}",
            )
            return _NOTHING
        kind = self.string(entry["kind"], path / "kind")
        if kind is _NOTHING:
            return _NOTHING
        if kind not in kits:
            hint = _did_you_mean(kind, installed)
            self.add(
                path / "kind",
                "no installed kit provides this kind",
                value=kind,
                expected=f"{hint}installed kinds: {listed}; or install the kit's package "
                f"(e.g. `pip install lifekit-{kind}`)",
            )
            return _NOTHING
        return kind

    def depends_on(self, value: Any, path: _Path, tags: Sequence[str]) -> tuple[str, ...]:
        """The dependencies that name declared resources; issues for the others."""
        if not isinstance(value, list | tuple):
            self.wrong_type(path, value, 'an array of resource tags, e.g. ["db", "ip"]')
            return ()
        known: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.wrong_type(path.item(index), item, "a resource tag (a string)")
            elif item not in tags:
                # build_model reports this too, but only once every tag is known; here the
                # hint can name the closest tag.
                hint = _did_you_mean(item, tags)
                shown = ", ".join(tags[:10]) + (", ..." if len(tags) > 10 else "")
                self.add(
                    path.item(index),
                    "unknown resource",
                    value=item,
                    expected=f"{hint}declared resources: {shown or 'none'}",
                )
            else:
                known.append(item)
        return tuple(known)

    def kit_params(
        self, kit: Kit, tag: str, params: Mapping[str, Any], path: _Path
    ) -> Mapping[str, Any] | None:
        """The kit's schema then the kit's ``validate``; ``None`` after reporting problems."""
        # Schema.validate names locations "<where>: params.<name>"; give it a marker prefix
        # and turn that into this file's dotted key.
        marker = f"resource {tag!r}: "
        prefixes = {marker: path}
        try:
            checked = kit.schema.validate(tag, params, where=marker.removesuffix(": "))
        except ConfigError as exc:
            self.issues.extend(self.relocate(issue, prefixes) for issue in exc.issues)
            return None
        try:
            return dict(kit.validate(tag, checked))
        except ParamError as exc:
            self.add(
                path / "params" / exc.param, "invalid value", value=exc.value, expected=exc.expected
            )
        except ConfigError as exc:
            self.issues.extend(self.relocate(issue, prefixes) for issue in exc.issues)
        return None

    def relocate(self, issue: ConfigIssue, prefixes: Mapping[str, _Path]) -> ConfigIssue:
        """An issue from the schema layer, re-addressed as ``FILE: resources.TAG.params.X``."""
        for prefix, path in prefixes.items():
            if issue.where.startswith(prefix):
                rest = issue.where.removeprefix(prefix)
                where = f"{self.where(path)}.{rest}"
                break
        else:
            return issue
        if issue.has_value():
            return ConfigIssue(where, issue.problem, value=issue.value, expected=issue.expected)
        return ConfigIssue(where, issue.problem, expected=issue.expected)

    def resolve_policy(
        self,
        tag: str,
        kit: Kit | None,
        layer: _Layer,
        defaults: _Layer,
        below_minimum: dict[_Minimum, list[str]],
    ) -> Policy:
        """Kit defaults < ``[defaults]`` < the resource's own keys; kit minimums enforced."""
        kit_class: type[Kit] | Kit = kit if kit is not None else Kit
        base = Policy()

        def pick(key: str, fallback: Any) -> tuple[Any, _Path | None]:
            """The value and the key that set it (``None``: the fallback)."""
            for source in (layer, defaults):
                if key in source:
                    return source[key]
            return fallback, None

        timeouts: dict[str, float] = {}
        for action in _ACTIONS:
            value, where = pick(f"timeouts.{action}", getattr(kit_class.default_timeouts, action))
            minimum: float = getattr(kit_class.minimum_timeouts, action)
            if kit is not None and where is not None and value < minimum:
                key = (where, kit.kind, action, value, minimum)
                if where[0] == "defaults":
                    # One issue per [defaults] key, naming every resource it reaches.
                    below_minimum.setdefault(key, []).append(tag)
                else:
                    self.below_minimum(key, [tag])
            timeouts[action] = float(value)
        interval, _ = pick("quickcheck_interval", kit_class.default_quickcheck_interval)
        max_recoveries, _ = pick(
            "recovery_limit.max_recoveries", base.recovery_limit.max_recoveries
        )
        window, _ = pick("recovery_limit.window", base.recovery_limit.window)
        return Policy(
            quickcheck_interval=float(interval),
            timeouts=Timeouts(**timeouts),
            local_recovery=pick("local_recovery", base.local_recovery)[0],
            recovery_limit=RecoveryLimit(max_recoveries=max_recoveries, window=float(window)),
            failover=pick("failover", base.failover)[0],
        )

    def read_hierarchies(
        self, table: Mapping[str, Any], cluster_nodes: Sequence[str]
    ) -> dict[str, HierarchySpec]:
        specs: dict[str, HierarchySpec] = {}
        for root, entry in table.items():
            path = _ROOT / "hierarchies" / str(root)
            if not isinstance(entry, Mapping):
                self.wrong_type(path, entry, f"a table ([hierarchies.{root}])")
                continue
            self.known_keys(entry, _HIERARCHY_KEYS, path)
            nodes: tuple[str, ...] = tuple(cluster_nodes)
            if "nodes" in entry:
                # What could be read, else the cluster's list, so build_model does not report
                # the same problem again.
                nodes = (
                    self.node_list(
                        entry["nodes"],
                        path / "nodes",
                        known=cluster_nodes,
                        empty="list the nodes that may host it, highest priority first",
                    )
                    or nodes
                )
            switchback = SwitchbackType.INTELLIGENT
            if "switchback" in entry:
                value = self.choice(
                    entry["switchback"],
                    path / "switchback",
                    [member.value for member in SwitchbackType],
                )
                if value is not _NOTHING:
                    switchback = SwitchbackType(value)
            rollback = True
            if "rollback" in entry:
                value = self.boolean(entry["rollback"], path / "rollback")
                if value is not _NOTHING:
                    rollback = value
            specs[str(root)] = HierarchySpec(nodes=nodes, switchback=switchback, rollback=rollback)
        return specs
