"""A third-party kit, installed with pip, is found and works without any change to lifekit.

``docs/example-kit`` (the ``lifekit-example-echo`` distribution) is built and installed with
pip into a temporary directory, outside this repository's environment. Each test then runs
Python in a subprocess with that directory on ``PYTHONPATH``, exactly as an installed
package is seen: lifekit finds the kit through the ``lifekit.kits`` entry point, and the
package's own tests, written with ``lifekit.testing.KitConformance``, pass.

To add a check (e.g. "used in a hierarchy through the runtime"), write a test taking the
``installed`` fixture and call :func:`run_python` with the code to run against the install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.pytest_subprocess import PYTEST_ARGS

EXAMPLE_KIT = Path(__file__).resolve().parents[2] / "docs" / "example-kit"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory ``lifekit-example-echo`` was pip-installed into (``--target``)."""
    work = tmp_path_factory.mktemp("third-party-kit")
    # Build from a copy, so that nothing the build leaves behind lands in the repository.
    source = work / "source"
    shutil.copytree(EXAMPLE_KIT, source, ignore=shutil.ignore_patterns("__pycache__"))
    target = work / "site"
    argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target)]
    # With hatchling in this environment the build needs nothing from an index; without it
    # pip's isolated build fetches hatchling first.
    if importlib.util.find_spec("hatchling") is not None:
        argv.append("--no-build-isolation")
    finished = subprocess.run(
        [*argv, "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert (target / "lifekit_example_echo" / "__init__.py").is_file()
    return target


def run_python(
    installed: Path, argv: list[str], *, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGV...`` with the installed kit importable, from an empty directory."""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    cwd = installed.parent / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


FIND_KIT = textwrap.dedent(
    """
    import lifekit_example_echo
    from lifekit._registry import load_kits

    registry = load_kits(node_name="t")
    kit = registry.get("echo")
    print("kit", type(kit).__module__, type(kit).__name__)
    print("from", lifekit_example_echo.__file__)
    print("kinds", " ".join(sorted(registry.kits)))
    """
)


def test_the_installed_kit_is_found_through_its_entry_point(installed: Path) -> None:
    finished = run_python(installed, ["-c", FIND_KIT])
    assert finished.returncode == 0, finished.stderr
    lines = dict(line.split(" ", 1) for line in finished.stdout.splitlines())
    assert lines["kit"] == "lifekit_example_echo EchoKit"
    assert Path(lines["from"]).is_relative_to(installed), lines["from"]
    assert "echo" in lines["kinds"].split()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_installed_kit_passes_its_own_conformance_tests(installed: Path, backend: str) -> None:
    # The package's own tests, run by pytest against the installed copy: its rootdir and
    # config are the example's, and importlib mode keeps the source tree off sys.path. One
    # backend per test keeps each under a few seconds.
    other = "trio" if backend == "asyncio" else "asyncio"
    finished = run_python(
        installed,
        [
            *PYTEST_ARGS,
            "-q",
            "-k",
            f"not {other}",
            "-c",
            str(EXAMPLE_KIT / "pyproject.toml"),
            "--rootdir",
            str(EXAMPLE_KIT),
            str(EXAMPLE_KIT / "tests"),
        ],
        timeout=90,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    # Eight rules, the registration test and one test of the running server.
    assert "10 passed, 9 deselected" in output, output


RUN_SUITE = textwrap.dedent(
    """
    import socket
    import anyio
    from lifekit._registry import load_kits
    from lifekit.testing import run_conformance

    def free_port():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    async def main():
        kit = load_kits(node_name="t").get("echo")
        report = await run_conformance(
            type(kit),
            params=lambda: {"port": free_port()},
            missing_params=lambda: {"port": free_port(), "command": ["/nonexistent/echo"]},
        )
        print(report)
        raise SystemExit(0 if report.passed else 1)

    anyio.run(main, backend="trio")
    """
)


def test_the_suite_runs_programmatically_on_the_installed_kit(installed: Path) -> None:
    finished = run_python(installed, ["-c", RUN_SUITE])
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "kit 'echo' on host" in finished.stdout
    assert finished.stdout.count("PASS") == 8, finished.stdout


USE_IN_HIERARCHY = textwrap.dedent(
    """
    import socket, sys, tempfile
    import anyio
    from lifekit import Node, State, parse_config

    def free_port():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    CONFIG = '''
    config_version = 1
    [node]
    name = "t1"
    [resources.echo1]
    kind = "echo"
    params = {{ port = {port} }}
    [resources.app1]
    kind = "app"
    depends_on = ["echo1"]
    params = {{ mode = "supervised", command = ["sleep", "600"] }}
    '''

    async def main():
        port = free_port()
        config = parse_config(CONFIG.format(port=port), source="<third-party>")
        with tempfile.TemporaryDirectory() as state:
            async with Node(config.model, name="t1", kits=config.kits, state_dir=state) as node:
                assert await node.bring_in_service("app1", timeout=30)
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    await stream.send(b"ping\\n")
                    print("echoed", (await stream.receive()).decode().strip())
                print("states", *(s.state.value for s in node.snapshot().resources.values()))
                removed = await node.take_out_of_service("app1", timeout=30)
                assert removed, node.status()
                print("after", *(s.state.value for s in node.snapshot().resources.values()))

    anyio.run(main, backend=sys.argv[1])
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_installed_kit_serves_in_a_hierarchy_through_the_runtime(
    installed: Path, backend: str
) -> None:
    # The third-party kind sits under a bundled kit's resource in one hierarchy: lifekit
    # validates its parameters, orders it first, runs its real server, takes it out last.
    finished = run_python(installed, ["-c", USE_IN_HIERARCHY, backend])
    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = dict(line.split(" ", 1) for line in finished.stdout.splitlines())
    assert lines["echoed"] == "ping"
    assert lines["states"] == "ISP ISP"
    assert lines["after"] == "OSU OSU"


def test_lifekit_check_validates_the_installed_kits_parameters(installed: Path) -> None:
    config = installed.parent / "bad.toml"
    config.write_text(
        'config_version = 1\n[resources.e]\nkind = "echo"\nparams = { port = "eighty" }\n'
    )
    finished = run_python(installed, ["-m", "lifekit", "check", str(config)])
    assert finished.returncode == 2, finished.stdout + finished.stderr
    assert "resources.e.params.port" in finished.stderr
    assert "'eighty'" in finished.stderr
