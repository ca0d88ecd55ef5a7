"""The long-running CLI commands: ``lifekit up``, ``lifekit status`` and ``lifekit demo``.

``lifekit._cli`` parses arguments and dispatches here; each ``cmd_*`` returns an exit code from
the documented contract (``docs/cli.md``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import anyio

from lifekit._cli import ExitCode
from lifekit._runtime import (
    EventsOverflowed,
    Node,
    PowerControl,
    RefusingPowerControl,
    SystemPowerControl,
)
from lifekit._runtime._control import control_request, open_control_listener, serve_control
from lifekit._runtime._logging import configure_logging
from lifekit._runtime._tree import render_event, render_tree
from lifekit.errors import ConfigError, ControlError

__all__ = ["cmd_demo", "cmd_status", "cmd_up", "default_socket"]

# Exit codes: the contract in docs/cli.md.
OK, USAGE, UNREACHABLE, FAILED = (
    ExitCode.OK,
    ExitCode.USAGE,
    ExitCode.UNREACHABLE,
    ExitCode.HIERARCHY_FAILED,
)


def default_socket() -> Path:
    """Where the control socket lives unless told otherwise."""
    from lifekit._config import default_control_socket  # noqa: PLC0415 - one definition

    return default_control_socket()


def cmd_up(args: argparse.Namespace) -> int:
    """Run the configuration on this node in the foreground until SIGINT/SIGTERM."""
    from lifekit._config import load_config  # noqa: PLC0415 - only `up` needs the loader

    try:
        config = load_config(
            args.file,
            node_name=getattr(args, "node", None),
            plugins=getattr(args, "plugin_modules", None) or (),
        )
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return USAGE
    node_settings = config.node
    name = node_settings.name
    configure_logging(
        level=getattr(args, "log_level", None) or node_settings.log_level,
        file=getattr(args, "log_file", None) or node_settings.log_file,
        format=getattr(args, "log_format", None) or node_settings.log_format,
    )
    socket_path = Path(getattr(args, "socket", None) or node_settings.control_socket)
    on_exit = "leave_running" if getattr(args, "leave_running", False) else node_settings.on_exit
    tree = not getattr(args, "no_tree", False) and sys.stdout.isatty()

    async def main() -> int:
        # Claim the socket before the node starts: a second `lifekit up` must fail here,
        # before it probes (and, on exit, takes out) what the first node runs.
        listener = await open_control_listener(socket_path)
        # Signals stay captured until the very end, so a second Ctrl-C during the take-out
        # cannot kill the process half-way through a remove.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with (
                Node(
                    config.model,
                    name=name,
                    kits=config.kits,
                    state_dir=node_settings.state_dir,
                    on_exit=on_exit,
                    power=_power_control(node_settings.power),
                ) as node,
                anyio.create_task_group() as group,
            ):
                group.start_soon(serve_control, node, listener)
                for root in config.model.hierarchies:
                    if name in config.model.eligible_nodes(root):
                        node.request_in_service(root)
                group.start_soon(_show_tree if tree else _show_events, node)
                async for _ in signals:
                    print("stopping: taking hierarchies out of service…", file=sys.stderr)
                    break
                group.cancel_scope.cancel()
        return OK

    try:
        return anyio.run(main)
    except ControlError as exc:
        print(f"lifekit up: {exc}", file=sys.stderr)
        return USAGE


async def _show_tree(node: Node) -> None:
    # Twice a second, whatever happens: one status document per redraw, never per change.
    while True:
        text = render_tree(node.status(), colour=True)
        sys.stdout.write("\x1b[H\x1b[J" + text + "\n\n(Ctrl-C takes everything out of service)\n")
        sys.stdout.flush()
        await anyio.sleep(0.5)


async def _show_events(node: Node) -> None:
    start = anyio.current_time()
    while True:
        try:
            async for event in node.events():
                print(render_event(event, since=start), flush=True)
            return
        except EventsOverflowed:
            # The terminal could not keep up: say so and go on from the current events.
            print("… events skipped: the output could not keep up …", flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status of the node behind the control socket."""
    path = Path(getattr(args, "socket", None) or default_socket())
    try:
        document = anyio.run(control_request, path, {"op": "status", "version": 1})
    except ControlError as exc:
        print(f"lifekit status: {exc}", file=sys.stderr)
        return UNREACHABLE
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2))
    else:
        print(render_tree(document, colour=sys.stdout.isatty()))
    failed = any(h["failed"] for h in document["hierarchies"])
    return FAILED if failed else OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo: an app hierarchy, a killed process, local recovery, then escalation."""
    from lifekit._demo import run_demo  # noqa: PLC0415 - the demo is not needed elsewhere

    return anyio.run(run_demo, bool(getattr(args, "fast", False)))


def _power_control(setting: str) -> PowerControl:
    """The power seam a ``[node] power`` setting names."""
    if setting == "system":
        return SystemPowerControl()
    if setting == "lab":
        from lifekit.lab import LabPowerControl  # noqa: PLC0415 - only lab nodes load the lab

        return LabPowerControl()
    return RefusingPowerControl()
