"""Each public module's ``__all__`` is exactly what it offers (after trio's test_exports).

The rule, read from each module's source so that it keeps holding as modules grow:

* every name in ``__all__`` exists, once;
* every public name the module defines at top level (``def``, ``class``, assignment) is in
  ``__all__``;
* every public name it imports from a *private* lifekit module (``lifekit._model``,
  ``lifekit.testing._suite``, ...) is a re-export, so it is in ``__all__``; import it under a
  ``_name`` to use it without exporting it.

Names imported from public modules (another lifekit module, the standard library, attrs) may
be re-exported or not; names under ``if TYPE_CHECKING:`` are not there at run time.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

PUBLIC_MODULES = [
    "lifekit",
    "lifekit.kit",
    "lifekit.hookspecs",
    "lifekit.errors",
    "lifekit.testing",
    "lifekit.lab",
]


def _is_private_lifekit(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "lifekit" and any(part.startswith("_") for part in parts[1:])


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Top-level statements, looking into ``if``/``try`` blocks but not TYPE_CHECKING ones."""
    for node in body:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                yield from _top_level(node.orelse)
                continue
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _top_level(block)
            for handler in node.handlers:
                yield from _top_level(handler.body)
        else:
            yield node


def _assigned(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _assigned(element)


def must_export(module: ModuleType) -> set[str]:
    """The public names ``module`` defines or re-exports from private lifekit modules."""
    source = Path(inspect.getfile(module)).read_text(encoding="utf-8")
    package = module.__name__ if hasattr(module, "__path__") else module.__package__ or ""
    return must_export_from(source, package)


def must_export_from(source: str, package: str) -> set[str]:
    """The public names ``source``, a module of ``package``, defines or re-exports."""
    names: set[str] = set()
    for node in _top_level(ast.parse(source).body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(_assigned(target))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            names.update(_assigned(node.target))
        elif isinstance(node, ast.ImportFrom) and _is_private_lifekit(_resolve(node, package)):
            names.update(alias.asname or alias.name for alias in node.names)
    return {name for name in names if not name.startswith("_")}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_what_exists_once(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert all(isinstance(item, str) for item in exported)
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [item for item in exported if not hasattr(module, item)]
    assert missing == [], f"{name}.__all__ names what {name} does not have: {missing}"
    # ``from module import *`` then gives exactly the listed names.
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)  # noqa: S102 - a fixed, trusted module name
    assert set(namespace) - {"__builtins__"} == set(exported)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_every_public_name(name: str) -> None:
    module = importlib.import_module(name)
    unlisted = sorted(must_export(module) - set(module.__all__))
    assert unlisted == [], (
        f"{name} defines or re-exports {unlisted} without listing them in __all__: add them "
        "to __all__, or give them a leading underscore if they are not for users"
    )


def test_the_rule_sees_definitions_and_private_re_exports() -> None:
    source = (
        "from __future__ import annotations\n"
        "import enum\n"
        "from typing import TYPE_CHECKING\n"
        "from lifekit._model import Result, State as _State\n"
        "from lifekit.errors import ConfigError\n"
        "from ._engine import Engine\n"
        "if TYPE_CHECKING:\n"
        "    from lifekit._runner import Host\n"
        "X, _y = 1, 2\n"
        "LIMIT: int = 3\n"
        "def helper(): ...\n"
        "class Thing: ...\n"
        "def _private(): ...\n"
    )
    assert must_export_from(source, "lifekit") == {
        "Result",
        "Engine",
        "X",
        "LIMIT",
        "helper",
        "Thing",
    }
    # In a sub-package, ``from ._suite import run`` re-exports from a private module.
    assert must_export_from("from ._suite import run\n", "lifekit.testing") == {"run"}
