"""The ``lifekit`` command: argument parsing, ``check``, ``kits``, and the exit-code contract.

This module parses every subcommand and owns the ones that only read: ``lifekit check FILE``
(validate a configuration) and ``lifekit kits`` (list installed kits). The long-running
commands ``up``, ``status`` and ``demo`` live in :mod:`lifekit._commands`, imported only when
one of them runs so that ``check`` starts fast and works without the runtime.

Exit codes are a contract (``docs/cli.md``) and live in :class:`ExitCode`. :func:`main` maps
errors that escape a command onto them, so a command may simply raise:
:class:`~lifekit.errors.ConfigError` -> 2 (every issue printed, one per line),
:class:`~lifekit.errors.ControlError` -> 3, :class:`KeyboardInterrupt` -> 130, any other
:class:`~lifekit.errors.LifekitError` -> 1 with its message, anything else -> 1 with a
traceback (a bug).
"""

from __future__ import annotations

import argparse
import enum
import importlib
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TextIO

from lifekit.errors import ConfigError, ControlError, LifekitError

__all__ = ["ExitCode", "build_parser", "main"]


class ExitCode(enum.IntEnum):
    """What ``lifekit`` exits with. The values are a documented contract: they never change."""

    #: Success.
    OK = 0
    #: An internal error (a bug, or a broken kit package): the message says which.
    INTERNAL_ERROR = 1
    #: Bad command-line usage, or an invalid configuration.
    USAGE = 2
    #: The node cannot be reached: its control socket is missing or refuses connections.
    UNREACHABLE = 3
    #: The node answered, and reports at least one failed hierarchy (``lifekit status``).
    HIERARCHY_FAILED = 4
    #: Interrupted (Ctrl-C) before the command finished.
    INTERRUPTED = 130


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def build_parser() -> argparse.ArgumentParser:
    """The ``lifekit`` argument parser, with every subcommand."""
    from lifekit import __version__  # noqa: PLC0415 - keeps `import lifekit._cli` light

    parser = argparse.ArgumentParser(
        prog="lifekit",
        description="High-availability clustering: protect services and fail them over.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 usage or invalid configuration, "
        "3 node unreachable, 4 a hierarchy failed, 130 interrupted. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"lifekit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="validate a configuration file",
        description="Validate a configuration file: every key, every kit parameter, the "
        "hierarchies. Prints every problem (file, key, bad value, what would be valid).",
    )
    check.add_argument("file", metavar="FILE", help="the TOML configuration file")
    check.add_argument(
        "--node",
        metavar="NAME",
        help="check as this node (default: [node] name, else the host name)",
    )
    _add_plugin_option(check)

    up = commands.add_parser(
        "up",
        help="run a configuration on this node in the foreground",
        description="Run the configuration on this node in the foreground, with a live status "
        "tree, serving status on the control socket. Ctrl-C takes the hierarchies out of "
        "service (unless --leave-running).",
    )
    up.add_argument("file", metavar="FILE", help="the TOML configuration file")
    up.add_argument(
        "--node", metavar="NAME", help="this node's name (default: [node] name, else host name)"
    )
    up.add_argument(
        "--socket",
        metavar="PATH",
        help="serve the control socket here (default: RUN_DIR/lifekit.sock)",
    )
    up.add_argument(
        "--leave-running",
        action="store_true",
        help="on exit, leave hierarchies running (overrides [node] on_exit)",
    )
    up.add_argument(
        "--no-tree",
        action="store_true",
        help="print events line by line instead of the live status tree",
    )
    up.add_argument(
        "--log-file", metavar="PATH", help="write logs here (default: [node] log_file, else stderr)"
    )
    up.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        type=str.lower,
        help="the lowest level logged (default: [node] log_level, else info)",
    )
    up.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text or as JSON objects (default: [node] log_format, else text)",
    )
    _add_plugin_option(up)

    status = commands.add_parser(
        "status",
        help="show the status of the node running on this machine",
        description="Ask the node behind the control socket for its status and print it. "
        "Exits 3 if no node answers, 4 if a hierarchy has failed.",
    )
    status.add_argument(
        "--json", action="store_true", help="print the versioned status document as JSON"
    )
    status.add_argument(
        "--socket",
        metavar="PATH",
        help="the node's control socket (default: /run/lifekit/lifekit.sock as root, "
        "else $TMPDIR/lifekit-UID/lifekit.sock)",
    )

    demo = commands.add_parser(
        "demo",
        help="run the demo: an app hierarchy, a killed process, recovery, escalation",
        description="Run an example app hierarchy, kill one of its processes, and show "
        "detection, local recovery, and escalation after the recovery limit.",
    )
    demo.add_argument("--fast", action="store_true", help="shorter intervals and pauses")

    kits = commands.add_parser(
        "kits",
        help="list installed kits",
        description="List the installed kits (the 'lifekit.kits' entry-point group, plus "
        "--plugin modules): kind, package, description.",
    )
    _add_plugin_option(kits)

    keygen = commands.add_parser(
        "keygen",
        help="write a new cluster key file (mode 0600), or print a key line for rotation",
        description="Write a new cluster key file holding one random 256-bit key, atomically "
        "and with mode 0600; copy it to every node, keeping its mode. With --print, print one "
        "new `<key-id> <key>` line instead, for a rotation: add it as a second line on every "
        "node, then move it first, then remove the old line.",
    )
    keygen.add_argument("path", nargs="?", metavar="PATH", help="the key file to create")
    keygen.add_argument("--print", action="store_true", dest="print_line", help="print a line")
    keygen.add_argument("--key-id", metavar="ID", help="the key's id (default: random)")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")

    # Everything after `lab` goes, untouched, to lifekit.lab._cli (its own parser and help):
    # importing the lab costs more than the rest of the CLI, so only `lifekit lab` pays it.
    # The NUL prefix makes this parser take `--help`, `--json`... as plain arguments.
    lab = commands.add_parser(
        "lab",
        help="a virtual cluster on this machine: bootstrap, doctor, up, down, exec, status, "
        "clean (`lifekit lab --help`)",
        add_help=False,
        prefix_chars="\0",
    )
    lab.add_argument("lab_args", nargs=argparse.REMAINDER)
    return parser


def _add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        metavar="MODULE",
        action="append",
        default=[],
        dest="plugins",
        help="import MODULE and register its kit hooks, as if it were installed (repeatable; "
        "for kit authors trying a kit before packaging it)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lifekit`` command and return its exit code (see :class:`ExitCode`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # --help, --version and usage errors: argparse has printed what it had to say.
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        # Commands read the imported modules from here (load_kits(plugins=...)).
        args.plugin_modules = []
        for name in getattr(args, "plugins", []):
            try:
                args.plugin_modules.append(importlib.import_module(name))
            except ImportError as exc:
                print(
                    f"lifekit {args.command}: --plugin {name}: cannot import it ({exc}); give "
                    "the name of a module on the Python path, e.g. --plugin mykit",
                    file=sys.stderr,
                )
                return ExitCode.USAGE
        return int(_COMMANDS[args.command](args))
    except ConfigError as exc:
        _print_issues(exc, sys.stderr)
        return ExitCode.USAGE
    except ControlError as exc:
        print(f"lifekit {args.command}: {exc}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    except KeyboardInterrupt:
        print(f"lifekit {args.command}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except LifekitError as exc:
        print(f"lifekit {args.command}: {exc}", file=sys.stderr)
        return ExitCode.INTERNAL_ERROR
    except Exception:  # noqa: BLE001 - the one place a bug becomes an exit code, with its traceback
        traceback.print_exc()
        print(
            f"lifekit {args.command}: internal error (a bug in lifekit or a kit; the traceback "
            "above says where)",
            file=sys.stderr,
        )
        return ExitCode.INTERNAL_ERROR


def _print_issues(error: ConfigError, stream: TextIO) -> None:
    for issue in error.issues:
        print(issue, file=stream)


def _cmd_check(args: argparse.Namespace) -> int:
    from lifekit._config import load_config  # noqa: PLC0415 - only `check` and `up` need it

    try:
        config = load_config(args.file, plugins=args.plugin_modules, node_name=args.node)
    except ConfigError as exc:
        _print_issues(exc, sys.stderr)
        count = len(exc.issues)
        print(f"{args.file}: invalid ({count} problem{'s' * (count != 1)})", file=sys.stderr)
        return ExitCode.USAGE
    resources = len(config.model.resources)
    hierarchies = len(config.model.hierarchies)
    print(
        f"{args.file}: ok \N{EM DASH} {resources} resource{'s' * (resources != 1)} in "
        f"{hierarchies} hierarch{'ies' if hierarchies != 1 else 'y'}"
    )
    return ExitCode.OK


def _cmd_kits(args: argparse.Namespace) -> int:
    from lifekit._registry import load_kits  # noqa: PLC0415 - loads pluggy and entry points

    registry = load_kits(node_name=socket.gethostname(), plugins=args.plugin_modules)
    packages = _kit_packages()
    rows = [("KIND", "PACKAGE", "DESCRIPTION")]
    for kind in sorted(registry.kits):
        kit = registry.kits[kind]
        module = type(kit).__module__
        package = packages.get(module.partition(".")[0], module)
        rows.append((kind, package, " ".join(kit.description.split()) or "-"))
    if len(rows) == 1:
        print(
            "no kits installed; install a kit package (e.g. `pip install lifekit-app`) or pass "
            "--plugin MODULE",
            file=sys.stderr,
        )
        return ExitCode.OK
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for kind, package, description in rows:
        print(f"{kind:<{widths[0]}}  {package:<{widths[1]}}  {description}")
    return ExitCode.OK


def _kit_packages() -> dict[str, str]:
    """Top-level module -> "distribution version", for the kit packages that are installed.

    Read from the entry points themselves: editable installs do not list their modules in
    the metadata ``packages_distributions()`` reads.
    """
    from importlib.metadata import entry_points  # noqa: PLC0415 - only `kits` needs it

    from lifekit._registry import ENTRY_POINT_GROUP  # noqa: PLC0415

    packages: dict[str, str] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        top = entry_point.module.partition(".")[0]
        if entry_point.dist is not None:
            packages[top] = f"{entry_point.dist.name} {entry_point.dist.version}"
    return packages


def _dispatch(name: str) -> Callable[[argparse.Namespace], int]:
    """A command of :mod:`lifekit._commands`, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        # Imported here: the runtime (anyio, the node) is not needed by `check` or `kits`.
        commands = importlib.import_module("lifekit._commands")
        handler: Callable[[argparse.Namespace], int] = getattr(commands, f"cmd_{name}")
        return handler(args)

    return run


def _cmd_keygen(args: argparse.Namespace) -> int:
    from lifekit._cluster._keys import generate_key_file, new_key_line  # noqa: PLC0415

    if args.print_line:
        print(new_key_line(key_id=args.key_id))
        return ExitCode.OK
    if not args.path:
        print("lifekit keygen: give the key file's PATH, or --print for a line", file=sys.stderr)
        return ExitCode.USAGE
    generate_key_file(args.path, key_id=args.key_id, overwrite=args.force)
    print(f"wrote {args.path} (mode 0600): copy it to every node, keeping its mode")
    return ExitCode.OK


def _cmd_lab(args: argparse.Namespace) -> int:
    lab_cli = importlib.import_module("lifekit.lab._cli")  # only now: see build_parser
    code: int = lab_cli.main(args.lab_args)
    return code


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": _cmd_check,
    "kits": _cmd_kits,
    "keygen": _cmd_keygen,
    "up": _dispatch("up"),
    "status": _dispatch("status"),
    "demo": _dispatch("demo"),
    "lab": _cmd_lab,
}


if __name__ == "__main__":
    sys.exit(main())
