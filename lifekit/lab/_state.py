"""Where a lab lives on disk, and its state file.

Every lab has a directory ``<base>/lklab-<name>/`` (base: ``$LIFEKIT_LAB_DIR`` or
``/var/lib/lifekit-lab``) holding ``state.json`` (what is running: PIDs, loop devices, faults),
the LUN image, each node's persistent directories and the logs. Every process that changes a
lab (the test, the CLI, the lab's controller) takes ``lock`` first, re-reads the state, changes
it and writes it back atomically, so a crash never leaves a half-written file.

Every kernel object a lab makes carries the prefix ``lklab-<name>``: network namespaces
``lklab-<name>-<node>``, the cgroup ``lklab-<name>``; that is how ``lifekit lab clean`` finds
a dead lab's leftovers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__: list[str] = []

PREFIX = "lklab-"
STATE_VERSION = 1


def base_dir() -> Path:
    """The directory labs live in (``$LIFEKIT_LAB_DIR``, default ``/var/lib/lifekit-lab``)."""
    return Path(os.environ.get("LIFEKIT_LAB_DIR", "/var/lib/lifekit-lab"))


def lab_id(name: str) -> str:
    """The prefix of every kernel object of the lab called ``name``."""
    return f"{PREFIX}{name}"


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the lab's lock (a ``flock`` on ``directory/lock``) for the block."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_state(directory: Path) -> dict[str, Any]:
    """The lab's state, or ``{}`` if it has none (yet)."""
    try:
        data: dict[str, Any] = json.loads((directory / "state.json").read_text())
    except FileNotFoundError:
        return {}
    return data


def write_state(directory: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically (write, fsync, rename)."""
    temporary = directory / "state.json.tmp"
    with open(temporary, "w") as file:
        json.dump(state, file, indent=1, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(directory / "state.json")
