"""The ``lifekit lab`` command: bootstrap, doctor, up, down, exec, status and clean.

``lifekit._cli`` hands everything after ``lifekit lab`` to :func:`main` untouched, so this
module (and with it :mod:`lifekit.lab`, which pulls in subprocess machinery and anyio) is
imported only when a lab command runs: ``import lifekit`` and the other commands stay fast.

Exit codes follow :class:`lifekit._cli.ExitCode`: 0 ok, 1 the lab could not do it (not root,
no such lab, a node that is off, something missing: the message says what and how to fix it),
2 bad usage or an invalid lab spec (every problem printed), 130 interrupted. ``exec`` exits
with the status of the command it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lifekit._cli import ExitCode
from lifekit.errors import ConfigError, ConfigIssue, LabError, LifekitError
from lifekit.lab import _bootstrap, _clean, _state, _sys
from lifekit.lab._lab import Lab
from lifekit.lab._spec import LabSpec, check_lab_name

__all__ = ["build_parser", "main"]

_SIZE = re.compile(r"(\d+)\s*([KMG]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from ``"64M"``, ``"1G"``, ``"512K"`` or a plain number (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: give a number of bytes, or a number with K, M or G "
            "(binary units), e.g. 64M; 0 means no shared LUN"
        )
    return int(match[1]) * _UNITS[match[2].upper()]


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list (``n1,n2,n3``); blanks are dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


class _HelpFormatter(argparse.HelpFormatter):
    """argparse measures subcommand names two columns less indented than it prints them;
    leave room so that ``bootstrap`` keeps its help on its own line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog)
        self._action_max_length = 15


def build_parser() -> argparse.ArgumentParser:
    """The ``lifekit lab`` argument parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lifekit lab",
        formatter_class=_HelpFormatter,
        description="A virtual cluster on this machine (nodes, networks, a client, a shared "
        "LUN, faults) for tests, kit authors and demos. Needs root.",
        epilog="Exit codes: 0 ok, 1 failed (the message says why and how to fix it), 2 usage "
        "or invalid lab spec, 130 interrupted; `exec` exits with the command's status. "
        "See docs/cli.md.",
    )
    commands = parser.add_subparsers(dest="lab_command", metavar="COMMAND")

    commands.add_parser(
        "bootstrap",
        help="install the Debian packages the lab needs (idempotent)",
        description="Install the missing Debian packages the lab and the bundled kits need "
        "(apt-get), printing them first; a second run installs nothing. Then check "
        "everything, as `doctor` does: exits 1 if something is still missing (kernel "
        "features cannot be installed).",
    )

    doctor = commands.add_parser(
        "doctor",
        help="report what the lab needs and what is missing",
        description="Check every requirement of the lab (root, kernel features, packages): "
        "one line each, OK or MISSING with the fix. Exits 0 if everything is there, 1 if not.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")

    defaults = LabSpec()
    up = commands.add_parser(
        "up",
        help="build a lab that outlives this command",
        description="Build a detached lab: it runs until `lifekit lab down NAME` (or "
        "`lifekit lab clean NAME`). Prints its name, nodes with addresses, networks and LUN.",
    )
    up.add_argument(
        "--name", metavar="NAME", help="the lab's name, 1-12 characters [a-z0-9] (default: random)"
    )
    up.add_argument(
        "--nodes",
        metavar="N1,N2,...",
        type=_names,
        default=defaults.nodes,
        help=f"cluster node names, in priority order (default: {','.join(defaults.nodes)})",
    )
    up.add_argument(
        "--networks",
        metavar="NET,...",
        type=_names,
        default=defaults.networks,
        help=f"networks every node is on (default: {','.join(defaults.networks)})",
    )
    up.add_argument("--no-client", action="store_true", help="no client node")
    up.add_argument(
        "--client-networks",
        metavar="NET,...",
        type=_names,
        help="networks the client is on (default: the first network)",
    )
    up.add_argument(
        "--lun-size",
        metavar="SIZE",
        type=parse_size,
        default=defaults.lun_size,
        help=f"size of the shared LUN, bytes or with K/M/G; 0: none "
        f"(default: {_format_size(defaults.lun_size).replace(' MiB', 'M')})",
    )
    up.add_argument(
        "--iscsi",
        action="store_true",
        help="run tgtd on a storage node (network san) so nodes can attach a fenced path",
    )
    up.add_argument(
        "--private-dir",
        metavar="PATH",
        action="append",
        dest="private_dirs",
        help="a directory each node gets its own copy of (repeatable; default: "
        f"{' '.join(defaults.private_dirs)})",
    )
    up.add_argument("--json", action="store_true", help="print the lab's status as JSON")

    down = commands.add_parser(
        "down",
        help="tear a lab down",
        description="Tear the lab down: every process, namespace, loop device, cgroup and its "
        "directory.",
    )
    down.add_argument("name", metavar="NAME", help="the lab's name")

    execute = commands.add_parser(
        "exec",
        help="run a command on a node",
        description="Run a command on a node of a lab (its network, mount, UTS and PID "
        "namespaces, its cgroup), with this terminal's stdin, stdout and stderr. Exits with "
        "the command's status.",
        usage="lifekit lab exec [-h] NAME NODE -- COMMAND [ARG ...]",
    )
    execute.add_argument("name", metavar="NAME", help="the lab's name")
    execute.add_argument("node", metavar="NODE", help="a node: n1, ..., client, storage")
    execute.add_argument(
        "argv", metavar="COMMAND", nargs=argparse.REMAINDER, help="the command and its arguments"
    )

    status = commands.add_parser(
        "status",
        help="list the labs, or show one",
        description="Without NAME: every lab on this machine, with its owner (detached, a live "
        "process, or orphaned) and its nodes' power. With NAME: that lab's nodes, addresses, "
        "disks and faults.",
    )
    status.add_argument("name", metavar="NAME", nargs="?", help="show this lab only")
    status.add_argument("--json", action="store_true", help="print JSON")

    clean = commands.add_parser(
        "clean",
        help="remove labs and their leftovers",
        description="Without arguments: remove labs whose owner process is gone (a killed test) "
        "and stray objects of labs without a directory. NAME: remove that lab whatever its "
        "state. --all: remove every lab, detached ones included.",
    )
    clean.add_argument("names", metavar="NAME", nargs="*", help="remove these labs")
    clean.add_argument(
        "--all", action="store_true", dest="everything", help="remove every lab on this machine"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``lifekit lab ARGV...`` and return its exit code (see the module docstring)."""
    parser = build_parser()
    argv = list(argv)
    command = None
    if argv[:1] == ["exec"] and "--" in argv:
        # The command after `--` is taken as it is: argparse versions differ in how they
        # treat `--` before a REMAINDER argument.
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # --help and usage errors: argparse has printed what it had to say.
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    if command is not None:
        args.argv = command
    if args.lab_command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    where = f"lifekit lab {args.lab_command}"
    try:
        return int(_COMMANDS[args.lab_command](args))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{where}: {issue}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except LifekitError as exc:
        # LabError above all: not root, no such lab, a node that is off, a missing tool.
        print(f"{where}: {exc}", file=sys.stderr)
        return ExitCode.INTERNAL_ERROR


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise LabError(
            f"needs root (network namespaces, mounts, loop devices, cgroups) and you are uid "
            f"{os.geteuid()}: run it as root, e.g. `sudo lifekit lab {command} ...`"
        )


# --- bootstrap and doctor --------------------------------------------------------------------


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    installed = _bootstrap.bootstrap(echo=print)
    if installed:
        print(f"lab bootstrap: installed {' '.join(installed)}")
    problems = _bootstrap.problems()
    if problems:
        for line in problems:
            print(f"lifekit lab bootstrap: still missing: {line}", file=sys.stderr)
        print(
            "lifekit lab bootstrap: these cannot be installed as packages; "
            "`lifekit lab doctor` shows the full report",
            file=sys.stderr,
        )
        return ExitCode.INTERNAL_ERROR
    print("lab bootstrap: everything the lab needs is here")
    return ExitCode.OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    results = _bootstrap.check()
    ok = all(problem is None for _what, problem, _fix in results)
    if args.json:
        document = {
            "ok": ok,
            "requirements": [
                {"what": what, "ok": problem is None, "problem": problem, "fix": fix or None}
                for what, problem, fix in results
            ],
        }
        print(json.dumps(document, indent=2))
    else:
        for what, problem, fix in results:
            if problem is None:
                print(f"OK       {what}")
            elif fix and fix != problem:
                print(f"MISSING  {what}: {problem}; fix: {fix}")
            else:
                print(f"MISSING  {what}: {problem}")
        missing = [what for what, problem, _fix in results if problem is not None]
        if missing:
            packages = sum(what.startswith("package ") for what in missing)
            hint = "`lifekit lab bootstrap` installs the packages" if packages else "see the fixes"
            print(
                f"{len(missing)} requirement{'s' * (len(missing) != 1)} missing; {hint}",
                file=sys.stderr,
            )
    return ExitCode.OK if ok else ExitCode.INTERNAL_ERROR


# --- up and down -----------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {
        "nodes": args.nodes,
        "networks": args.networks,
        "client": not args.no_client,
        "client_networks": args.client_networks,
        "lun_size": args.lun_size,
        "iscsi": args.iscsi,
    }
    if args.private_dirs is not None:
        fields["private_dirs"] = tuple(args.private_dirs)
    issues: list[ConfigIssue] = []
    try:
        spec: LabSpec | None = LabSpec(**fields)
    except ConfigError as exc:
        issues.extend(exc.issues)
        spec = None
    if args.name is not None:
        try:
            check_lab_name(args.name)
        except ConfigError as exc:
            issues.extend(exc.issues)
    if issues or spec is None:
        # Every problem at once, the spec's and the name's, named by the option that set it.
        raise ConfigError([_as_option(issue) for issue in issues])
    _need_root("up")
    lab = Lab(spec, name=args.name).up(detached=True)
    status = lab.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_up(lab, status)
    return ExitCode.OK


def _as_option(issue: ConfigIssue) -> ConfigIssue:
    """``lab: lun_size: ...`` becomes ``--lun-size: ...``: what the user typed."""
    field = issue.where.removeprefix("lab: ")
    option = {"private_dirs": "private-dir", "client": "no-client"}.get(
        field, field.replace("_", "-")
    )
    if field == issue.where:
        return issue
    if issue.has_value():
        return ConfigIssue(f"--{option}", issue.problem, value=issue.value, expected=issue.expected)
    return ConfigIssue(f"--{option}", issue.problem, expected=issue.expected)


def _print_up(lab: Lab, status: dict[str, Any]) -> None:
    print(f"lab {lab.name} is up (detached): {lab.directory}")
    _print_nodes(status)
    print(f"networks: {', '.join(status['networks'])}")
    _print_lun(lab, status)
    first = lab.spec.nodes[0]
    print(f"run a command: lifekit lab exec {lab.name} {first} -- ip -br addr")
    print(f"tear it down:  lifekit lab down {lab.name}")


def _print_nodes(status: dict[str, Any]) -> None:
    rows = [("NODE", "POWER", "ADDRESSES")]
    for name, node in status["nodes"].items():
        power = "hung" if node["frozen"] else node["power"]
        addresses = "  ".join(
            f"{network} {v4} {v6}" for network, (v4, v6) in node["addresses"].items()
        )
        rows.append((name, power, addresses))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for name, power, addresses in rows:
        print(f"  {name:<{widths[0]}}  {power:<{widths[1]}}  {addresses}")


def _print_lun(lab: Lab, status: dict[str, Any]) -> None:
    if not status["lun"]:
        print("LUN: none")
        return
    disks = ", ".join(
        f"{name} {node['disk']}"
        + (f" (fenced {node['fenced_disk']})" if node["fenced_disk"] else "")
        for name, node in status["nodes"].items()
        if node["disk"]
    )
    print(
        f"LUN: {status['lun']} ({_format_size(lab.spec.lun_size)}), on each node as "
        f"/run/lifekit-lab/disk/lun: {disks}"
    )
    if lab.spec.iscsi:
        print(f"iSCSI target: {lab.iscsi_target} at {lab.iscsi_portal}")


def _cmd_down(args: argparse.Namespace) -> int:
    _need_root("down")
    lab = Lab.attach(args.name)
    lab.down()
    print(f"lab {lab.name} is down")
    return ExitCode.OK


# --- exec ------------------------------------------------------------------------------------


def _cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.argv)
    if not command:
        raise ConfigError(
            [
                ConfigIssue(
                    "COMMAND",
                    "no command given",
                    expected=f"put it after --, e.g. lifekit lab exec {args.name} {args.node} "
                    "-- ip -br addr",
                )
            ]
        )
    _need_root("exec")
    node = Lab.attach(args.name).node(args.node)
    full = node.exec_argv(command)
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process, as `ip netns exec` does: the terminal, stdin and signals (Ctrl-C)
    # go straight to the command, and its exit status becomes ours.
    os.execvp(full[0], full)  # noqa: S606 - an argv list (the node's exec_argv), no shell


# --- status ----------------------------------------------------------------------------------


def _owner(state: dict[str, Any]) -> tuple[str, int | None]:
    """``("detached" | "alive" | "orphaned", owner PID)``."""
    owner = state.get("owner")
    if owner is None:
        return "detached", None
    return ("alive" if _sys.alive(owner[0], owner[1]) else "orphaned"), int(owner[0])


def _power(entry: dict[str, Any]) -> str:
    """A node's power as the state file claims it, checked against its PID 1."""
    if entry.get("power") != "on":
        return "off"
    init = entry.get("init")
    if not init or not _sys.alive(init[0], init[1]):
        return "dead"  # the state says on, but its PID 1 is gone (the machine rebooted?)
    return "hung" if entry.get("frozen") else "on"


def _ordered(state: dict[str, Any]) -> list[str]:
    """The state's nodes: cluster nodes in priority order, then the client and storage."""
    cluster = [name for name in state.get("spec", {}).get("nodes", ()) if name in state["nodes"]]
    return cluster + sorted(set(state["nodes"]) - set(cluster))


def _labs() -> list[dict[str, Any]]:
    base = _state.base_dir()
    labs = []
    for directory in sorted(base.glob(f"{_state.PREFIX}*")) if base.is_dir() else ():
        state = _state.read_state(directory)
        if not state or not directory.is_dir():
            continue
        owner, pid = _owner(state)
        labs.append(
            {
                "name": state.get("name", directory.name.removeprefix(_state.PREFIX)),
                "id": directory.name,
                "directory": str(directory),
                "owner": owner,
                "owner_pid": pid,
                "nodes": {name: _power(state["nodes"][name]) for name in _ordered(state)},
            }
        )
    return labs


def _cmd_status(args: argparse.Namespace) -> int:
    if args.name is not None:
        return _status_one(args)
    labs = _labs()
    known = {lab["id"] for lab in labs}
    # Objects of labs with no state file (a lab killed while it was being made); only root
    # can see every one of them.
    strays = sorted(set(_clean.leftovers()) - known) if os.geteuid() == 0 else []
    if args.json:
        print(
            json.dumps({"base": str(_state.base_dir()), "labs": labs, "strays": strays}, indent=2)
        )
        return ExitCode.OK
    if not labs:
        print(f"no labs in {_state.base_dir()}")
    else:
        rows = [("NAME", "OWNER", "NODES")]
        for lab in labs:
            owner = lab["owner"]
            if owner == "alive":
                owner = f"pid {lab['owner_pid']}"
            elif owner == "orphaned":
                owner = f"orphaned (pid {lab['owner_pid']} is gone)"
            nodes = " ".join(f"{name}:{power}" for name, power in lab["nodes"].items())
            rows.append((lab["name"], owner, nodes))
        widths = [max(len(row[column]) for row in rows) for column in range(2)]
        for name, owner, nodes in rows:
            print(f"{name:<{widths[0]}}  {owner:<{widths[1]}}  {nodes}")
        if any(lab["owner"] == "orphaned" for lab in labs):
            print("orphaned labs: `lifekit lab clean` removes them", file=sys.stderr)
    for lab_id in strays:
        print(
            f"leftovers of {lab_id} (no state file): `lifekit lab clean` removes them",
            file=sys.stderr,
        )
    return ExitCode.OK


def _status_one(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.name)
    status = lab.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return ExitCode.OK
    state = _state.read_state(lab.directory)
    owner, pid = _owner(state)
    owner_text = {"detached": "detached", "alive": f"owned by pid {pid}"}.get(
        owner, f"orphaned: owner pid {pid} is gone; `lifekit lab clean` removes it"
    )
    print(f"lab {lab.name} ({owner_text}): {lab.directory}")
    for name, entry in state.get("nodes", {}).items():
        # Show the checked power (a node whose PID 1 died reads "dead", not "on").
        status["nodes"][name]["power"] = _power(entry)
        status["nodes"][name]["frozen"] = False
    _print_nodes(status)
    print(f"networks: {', '.join(status['networks'])}")
    _print_lun(lab, status)
    faults = [f"cut {node}/{network}" for node, network in status["cut"]]
    if status["partition"]:
        faults.append("partition " + " | ".join(",".join(g) for g in status["partition"]))
    for port, impairment in status["impairments"].items():
        what = ", ".join(
            f"{key} {value}"
            for key, value in impairment.items()
            if key in ("loss", "rate_kbit", "delay") and value
        )
        faults.append(f"impaired {port.replace('-', '/', 1)} ({what})")
    print(f"faults: {'; '.join(faults) or 'none'}")
    return ExitCode.OK


# --- clean -----------------------------------------------------------------------------------


def _cmd_clean(args: argparse.Namespace) -> int:
    issues = []
    for name in args.names:
        try:
            check_lab_name(name)
        except ConfigError as exc:
            issues += [
                ConfigIssue("NAME", i.problem, value=name, expected=i.expected) for i in exc.issues
            ]
    if issues:
        raise ConfigError(issues)
    _need_root("clean")
    before = _clean.leftovers()
    removed = _clean.clean(names=args.names, everything=args.everything)
    found = [lab_id for lab_id in removed if lab_id in before]
    for lab_id in found:
        kinds: dict[str, int] = {}
        for item in before[lab_id]:
            kind = item.split(" ", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        summary = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
        print(f"removed {lab_id.removeprefix(_state.PREFIX)} ({summary})")
    for lab_id in removed:
        if lab_id not in before:
            print(f"nothing of lab {lab_id.removeprefix(_state.PREFIX)} was found")
    if not found:
        print("nothing to clean")
    return ExitCode.OK


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "bootstrap": _cmd_bootstrap,
    "doctor": _cmd_doctor,
    "up": _cmd_up,
    "down": _cmd_down,
    "exec": _cmd_exec,
    "status": _cmd_status,
    "clean": _cmd_clean,
}
