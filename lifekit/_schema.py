"""Kit parameter schemas: declared types, defaults, uniqueness, and validation with clear errors.

Pure: used by the config loader, ``lifekit check`` and the conformance suite alike.
"""

from __future__ import annotations

import builtins
import difflib
import keyword
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from lifekit.errors import ConfigError, ConfigIssue

__all__ = ["Param", "Schema"]

_TYPES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
}


class _NoDefault:
    def __repr__(self) -> str:
        return "<no default>"


_NO_DEFAULT: Any = _NoDefault()


def _optional_tuple(value: Iterable[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _params_tuple(value: Iterable[Param]) -> tuple[Param, ...]:
    return tuple(value)


@attrs.frozen
class Param:
    """One kit parameter.

    :param name: its key in the resource's ``params``.
    :param type: ``str``, ``int``, ``float``, ``bool`` or ``list``.
    :param required: must be given (then it has no default).
    :param default: the value used when it is not given.
    :param unique: no two resources of this kind may share a value (e.g. a virtual IP).
    :param choices: the only values allowed.
    :param item_type: for a ``list``, the type of its items.
    :param check: an extra check returning an error text (what would be valid) or ``None``.
    :param description: one line for docs and ``lifekit check``.
    """

    name: str
    type: builtins.type[Any] = str
    required: bool = False
    default: Any = _NO_DEFAULT
    unique: bool = False
    choices: tuple[Any, ...] | None = attrs.field(default=None, converter=_optional_tuple)
    item_type: builtins.type[Any] = str
    check: Callable[[Any], str | None] | None = attrs.field(default=None, eq=False)
    description: str = ""

    @property
    def has_default(self) -> bool:
        """Whether a default was declared."""
        return self.default is not _NO_DEFAULT

    def describe_type(self) -> str:
        """What a valid value looks like, in words."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        if self.type is list:
            item = _TYPES.get(self.item_type, f"a {self.item_type.__name__}")
            return f"a list of {item.split(' ', 1)[1]}s"
        return _TYPES.get(self.type, self.type.__name__)


def _convert(value: Any, wanted: builtins.type[Any]) -> tuple[bool, Any]:
    """Accept ``value`` as ``wanted`` without lossy coercion (no "1" for 1, no 1 for True)."""
    if wanted is bool:
        return isinstance(value, bool), value
    if wanted is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if wanted is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if wanted is list:
        return isinstance(value, list | tuple), list(value) if isinstance(value, tuple) else value
    return isinstance(value, wanted), value


@attrs.frozen
class Schema:
    """A kit's parameters. ``validate`` turns raw parameters into checked ones or raises."""

    params: tuple[Param, ...] = attrs.field(default=(), converter=_params_tuple)

    @property
    def by_name(self) -> Mapping[str, Param]:
        """Parameters by name."""
        return MappingProxyType({param.name: param for param in self.params})

    def problems(self) -> list[str]:
        """What is wrong with the schema itself (empty when it is valid)."""
        names = [param.name for param in self.params]
        found = [
            f"parameter {name!r} is declared twice"
            for name in sorted({name for name in names if names.count(name) > 1})
        ]
        for param in self.params:
            label = f"parameter {param.name!r}"
            if not param.name.isidentifier() or keyword.iskeyword(param.name):
                found.append(f"{label}: the name must be a Python identifier")
            if param.type not in _TYPES:
                found.append(f"{label}: type must be one of str, int, float, bool, list")
            if param.required and param.has_default:
                found.append(f"{label}: a required parameter cannot have a default")
            if param.has_default and param.default is not None:
                ok, _ = _convert(param.default, param.type)
                if not ok:
                    found.append(
                        f"{label}: default {param.default!r} is not {param.describe_type()}"
                    )
                elif param.choices is not None and param.default not in param.choices:
                    found.append(f"{label}: default {param.default!r} is not among its choices")
            if not param.description:
                found.append(f"{label}: has no description")
        return found

    def validate(self, tag: str, params: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
        """Check ``params`` for resource ``tag``; return them with defaults filled in.

        :param where: location prefix for errors (file and key), defaults to the resource.
        :raises ConfigError: every problem, each naming the resource, the parameter, the bad
            value and what would be valid.
        """
        prefix = where or f"resource {tag!r}"
        issues: list[ConfigIssue] = []
        known = self.by_name
        result: dict[str, Any] = {}
        for name, value in params.items():
            param = known.get(name)
            if param is None:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                issues.append(
                    ConfigIssue(
                        f"{prefix}: params.{name}",
                        "unknown parameter",
                        expected=f"{hint}valid parameters: {', '.join(known) or 'none'}",
                    )
                )
                continue
            problem = _check_value(param, value)
            if problem is not None:
                issues.append(
                    ConfigIssue(
                        f"{prefix}: params.{name}", "invalid value", value=value, expected=problem
                    )
                )
                continue
            result[name] = _convert(value, param.type)[1]
        for param in self.params:
            if param.name in result or param.name in params:
                continue
            if param.required:
                issues.append(
                    ConfigIssue(
                        f"{prefix}: params.{param.name}",
                        "required parameter is missing",
                        expected=f"give {param.describe_type()}"
                        + (f" ({param.description})" if param.description else ""),
                    )
                )
            elif param.has_default:
                result[param.name] = param.default
        if issues:
            raise ConfigError(issues)
        return result


def _check_value(param: Param, value: Any) -> str | None:
    ok, converted = _convert(value, param.type)
    if not ok:
        return f"expected {param.describe_type()}"
    if param.type is list:
        for item in converted:
            if not _convert(item, param.item_type)[0]:
                return f"expected {param.describe_type()}; item {item!r} is not"
    if param.choices is not None and converted not in param.choices:
        return f"expected {param.describe_type()}"
    if param.check is not None:
        return param.check(converted)
    return None


def unique_values(
    schema_of: Callable[[str], Schema | None],
    resources: Sequence[tuple[str, str, Mapping[str, Any]]],
) -> list[ConfigIssue]:
    """Issues for every value of a ``unique`` parameter shared by two resources of one kind.

    :param resources: ``(tag, kind, validated params)`` triples.
    """
    seen: dict[tuple[str, str, str], str] = {}
    issues = []
    for tag, kind, params in resources:
        schema = schema_of(kind)
        if schema is None:
            continue
        for param in schema.params:
            if not param.unique or param.name not in params:
                continue
            key = (kind, param.name, repr(params[param.name]))
            if key in seen:
                issues.append(
                    ConfigIssue(
                        f"resource {tag!r}: params.{param.name}",
                        f"must be unique among {kind!r} resources but {seen[key]!r} has it too",
                        value=params[param.name],
                        expected="give each resource its own value",
                    )
                )
            else:
                seen[key] = tag
    return issues
