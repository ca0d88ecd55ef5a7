"""`lifekit check`, `lifekit kits` and the CLI's exit codes, run as real subprocesses.

The kit is a third-party-style module written to a temporary directory and loaded with
``--plugin``, the way a kit author tries a kit before packaging it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LIFEKIT = Path(sys.executable).parent / "lifekit"

KIT_MODULE = '''
"""A kit as a kit author would write it, before packaging."""
from lifekit.kit import Kit, Param, Schema, Timeouts, hookimpl


class NoteKit(Kit):
    kind = "note"
    description = "Writes a note.\\n    Used by the CLI tests."
    schema = Schema([Param("text", str, required=True, description="what to write")])
    minimum_timeouts = Timeouts(restore=5.0, remove=5.0, quickcheck=1.0, recover=5.0)


@hookimpl
def lifekit_kits(node_name):
    return [NoteKit()]
'''

GOOD = """
config_version = 1
[node]
name = "n1"
[cluster]
nodes = ["n1", "n2"]
[resources.a]
kind = "note"
params = { text = "hello" }
[resources.b]
kind = "note"
depends_on = ["a"]
params = { text = "world" }
[resources.c]
kind = "note"
params = { text = "alone" }
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cli_test_notekit.py").write_text(KIT_MODULE)
    return tmp_path


def _run(
    workdir: Path, *args: str, command: tuple[str, ...] = (str(LIFEKIT),)
) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    done = subprocess.run(
        [*command, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def _check(workdir: Path, text: str, *extra: str) -> tuple[int, str, str]:
    (workdir / "cluster.toml").write_text(text)
    return _run(workdir, "check", "cluster.toml", "--plugin", "cli_test_notekit", *extra)


def test_console_script_is_installed() -> None:
    assert LIFEKIT.is_file(), f"{LIFEKIT} is missing: run `uv sync --all-packages`"


def test_good_file_exits_0_with_a_summary(workdir: Path) -> None:
    code, out, err = _check(workdir, GOOD)
    assert (code, out, err) == (0, "cluster.toml: ok \u2014 3 resources in 2 hierarchies\n", "")


def test_singular_summary(workdir: Path) -> None:
    code, out, _ = _check(
        workdir, '[node]\nname = "n1"\n[resources.a]\nkind = "note"\nparams = { text = "x" }\n'
    )
    assert (code, out) == (0, "cluster.toml: ok \u2014 1 resource in 1 hierarchy\n")


def test_every_problem_is_printed_one_per_line_and_exits_2(workdir: Path) -> None:
    bad = GOOD.replace('text = "world"', 'txt = "world"').replace(
        '[resources.c]\nkind = "note"', '[resources.c]\nkind = "note"\ntimeouts = { restore = 1 }'
    )
    bad += '[hierarchies.b]\nswitchback = "sometimes"\n'
    code, out, err = _check(workdir, bad)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        "cluster.toml: resources.b.params.txt: unknown parameter; did you mean 'text'? "
        "valid parameters: text",
        "cluster.toml: resources.b.params.text: required parameter is missing; give a string "
        "(what to write)",
        "cluster.toml: resources.c.timeouts.restore: below the 'note' kit's minimum restore "
        "timeout of 5 s (resource 'c') (got 1); expected at least 5 s",
        "cluster.toml: hierarchies.b.switchback: invalid value (got 'sometimes'); expected one "
        "of 'intelligent', 'automatic'",
        "cluster.toml: invalid (4 problems)",
    ]


def test_toml_syntax_error_names_line_and_column(workdir: Path) -> None:
    code, _, err = _check(workdir, '[node]\nname = "n1"\n[resources.a\n')
    assert code == 2
    assert err.splitlines()[0].startswith("cluster.toml: line 3, column 13: invalid TOML: ")
    assert err.splitlines()[-1] == "cluster.toml: invalid (1 problem)"


def test_missing_file_exits_2(workdir: Path) -> None:
    code, _, err = _run(workdir, "check", "absent.toml")
    assert code == 2
    assert err.startswith("absent.toml: cannot read the configuration file: No such file")


def test_unknown_kind_without_the_plugin_names_the_kind(workdir: Path) -> None:
    (workdir / "cluster.toml").write_text(GOOD)
    code, _, err = _run(workdir, "check", "cluster.toml")
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith(
        "cluster.toml: resources.a.kind: no installed kit provides this kind (got 'note'); "
    )
    assert "installed kinds: " in first


def test_node_option_checks_as_that_node(workdir: Path) -> None:
    shared = GOOD.replace('[node]\nname = "n1"\n', "").replace('"n1", "n2"', '"x-n1", "x-n2"')
    code, out, _ = _check(workdir, shared, "--node", "x-n2")
    assert (code, out) == (0, "cluster.toml: ok \u2014 3 resources in 2 hierarchies\n")
    code, _, err = _check(workdir, shared)  # as the host name, which is not a cluster node
    assert code == 2
    assert "(the host name; set [node] name or pass --node NAME), is not in the cluster" in err


def test_plugin_that_cannot_be_imported_exits_2(workdir: Path) -> None:
    (workdir / "cluster.toml").write_text(GOOD)
    code, _, err = _run(workdir, "check", "cluster.toml", "--plugin", "no_such_kit_module")
    assert code == 2
    assert err == (
        "lifekit check: --plugin no_such_kit_module: cannot import it (No module named "
        "'no_such_kit_module'); give the name of a module on the Python path, e.g. "
        "--plugin mykit\n"
    )


def test_kits_lists_kind_package_and_description(workdir: Path) -> None:
    code, out, _ = _run(workdir, "kits", "--plugin", "cli_test_notekit")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "PACKAGE", "DESCRIPTION"]
    assert [line.split(None, 2) for line in lines if line.startswith("note ")] == [
        ["note", "cli_test_notekit", "Writes a note. Used by the CLI tests."]
    ]


def test_version_and_usage_errors(workdir: Path) -> None:
    from lifekit import __version__  # noqa: PLC0415

    assert _run(workdir, "--version") == (0, f"lifekit {__version__}\n", "")
    code, _, err = _run(workdir)
    assert code == 2
    assert "check" in err
    code, _, err = _run(workdir, "frobnicate")
    assert code == 2
    assert "invalid choice: 'frobnicate'" in err
    code, _, err = _run(workdir, "up", "x.toml", "--log-format", "xml")
    assert code == 2
    assert "invalid choice: 'xml'" in err


def test_module_entry_point_runs_main(workdir: Path) -> None:
    (workdir / "cluster.toml").write_text(GOOD)
    code, out, _ = _run(
        workdir,
        "check",
        "cluster.toml",
        "--plugin",
        "cli_test_notekit",
        command=(sys.executable, "-m", "lifekit._cli"),
    )
    assert (code, out) == (0, "cluster.toml: ok \u2014 3 resources in 2 hierarchies\n")
