"""The pure core imports nothing that does I/O, reads a clock, or runs concurrently.

The engine, the model, the schema and the errors are what property tests hammer and what every
other layer builds on; they must stay synchronous and deterministic. This test reads their
source (no import needed, so it also sees imports inside functions and ``TYPE_CHECKING``
blocks) and checks every import against two lists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lifekit

PACKAGE = Path(lifekit.__file__).resolve().parent

#: Modules the pure core may not import, directly or through ``from``. The first line is the
#: rule the project states; the rest are the same rule spelt out (I/O, clocks, concurrency).
FORBIDDEN = frozenset(
    {
        *("anyio", "subprocess", "socket", "os", "time", "pluggy", "asyncio", "trio"),
        *("threading", "random"),
        *("signal", "select", "selectors", "multiprocessing", "concurrent", "shutil"),
        *("datetime", "logging", "tempfile", "io"),
    }
)

#: The lifekit modules that are pure themselves, and so may be imported by the pure core.
PURE_LIFEKIT = (
    *("lifekit._model", "lifekit._engine", "lifekit._schema", "lifekit.errors"),
    "lifekit._cluster._wire",
    *(f"lifekit._cluster.{name}" for name in ("_config", "_engine", "_membership")),
    *(f"lifekit._cluster.{name}" for name in ("_messages", "_placement", "_quorum")),
)

#: The cluster's pure safety core (membership, quorum, placement, the per-node engine).
PURE_CLUSTER = ("__init__", "_config", "_engine", "_membership", "_messages", "_placement")


def pure_files() -> list[Path]:
    """The files that make up the pure core."""
    files = sorted((PACKAGE / "_engine").glob("*.py"))
    files += [PACKAGE / "_model.py", PACKAGE / "_schema.py", PACKAGE / "errors.py"]
    files += [PACKAGE / "_cluster" / "_wire.py"]
    files += [PACKAGE / "_cluster" / f"{name}.py" for name in (*PURE_CLUSTER, "_quorum")]
    return files


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Every module ``source`` (the text of ``module``) imports, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".")
                base = package[: len(package) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "lifekit":
                # ``from lifekit import kit`` imports the module lifekit.kit (the package
                # itself is imported by any lifekit import: that is not a dependency).
                found += [f"lifekit.{alias.name}" for alias in node.names]
            else:
                found.append(target)
    return found


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """What ``source`` imports that the pure core may not."""
    bad = []
    for name in imported_modules(source, module, is_package=is_package):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            bad.append(f"{module} imports {name}")
        elif top == "lifekit" and name != "lifekit" and not name.startswith(PURE_LIFEKIT):
            bad.append(f"{module} imports {name}, which is not pure")
        elif name == "lifekit":
            bad.append(f"{module} imports lifekit itself, which pulls in the runtime")
    return bad


@pytest.mark.parametrize("path", pure_files(), ids=lambda path: path.name)
def test_the_pure_core_imports_nothing_impure(path: Path) -> None:
    module = module_name(path)
    source = path.read_text(encoding="utf-8")
    assert violations(source, module, is_package=path.name == "__init__.py") == []


def test_the_pure_files_are_the_expected_ones() -> None:
    names = {module_name(path) for path in pure_files()}
    assert {"lifekit._engine", "lifekit._engine._engine", "lifekit._engine._messages"} <= names
    assert {"lifekit._model", "lifekit._schema", "lifekit.errors"} <= names
    assert "lifekit._cluster._wire" in names
    assert {"lifekit._cluster._engine", "lifekit._cluster._quorum"} <= names


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os", "imports os"),
        ("import os.path as p", "imports os.path"),
        ("from time import monotonic", "imports time"),
        ("import anyio.abc", "imports anyio.abc"),
        ("def f():\n    import subprocess", "imports subprocess"),
        ("if TYPE_CHECKING:\n    from trio import Nursery", "imports trio"),
        ("from lifekit import kit", "imports lifekit.kit, which is not pure"),
        ("from lifekit._runner import run", "imports lifekit._runner, which is not pure"),
        ("from .. import _runner", "imports lifekit._runner, which is not pure"),
        ("import lifekit", "imports lifekit itself"),
    ],
)
def test_the_checker_catches_impure_imports(source: str, expected: str) -> None:
    (found,) = violations(source, "lifekit._engine._engine")
    assert expected in found


@pytest.mark.parametrize(
    "source",
    [
        "import enum, heapq, math",
        "from collections.abc import Mapping",
        "from lifekit._model import Model",
        "from lifekit.errors import EngineFailed",
        "from . import _messages",
        "from ._messages import RunAction",
        "import attrs",
    ],
)
def test_the_checker_accepts_pure_imports(source: str) -> None:
    assert violations(source, "lifekit._engine._engine") == []
