"""Fixtures for the app kit's tests: both anyio backends, a kit harness, and a process sweeper.

Every test that starts processes gets a unique ``LIFEKIT_APP_TEST`` value in the environment;
everything it starts inherits it (the kit adds to the environment, never replaces it), even
daemons that left their session. At teardown the harness first removes every resource it made
through every kit object that touched it (which also reaps the kits' children), then kills, by
pid, any process still carrying the marker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from lifekit_app import AppKit

from lifekit.kit import ActionContext, LocalHost, NodeContext, Outcome, Resource, Result

FIXTURES = Path(__file__).parent / "fixtures"
#: Generous bound on one kit action in a test; the actions take milliseconds.
ACTION_BOUND = 20.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each anyio test on both backends."""
    return str(request.param)


def _marked_pids(marker: str) -> list[int]:
    needle = f"LIFEKIT_APP_TEST={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue  # gone, or a kernel thread
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A unique environment marker inherited by every process the test starts.

    At teardown every process still carrying it is killed by pid (SIGKILL to it and to its
    process group), whatever the test did.
    """
    value = uuid.uuid4().hex
    monkeypatch.setenv("LIFEKIT_APP_TEST", value)
    yield value
    for pid in _marked_pids(value):
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)


class Harness:
    """Calls the app kit's actions the way the runtime would, on this machine."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir()
        self.node = NodeContext(
            name="t", host=LocalHost(), state_dir=self.state_dir, log=logging.getLogger("test")
        )
        self.kit = AppKit()
        self.kits: list[AppKit] = [self.kit]
        self.resources: dict[str, Resource] = {}

    def new_kit(self) -> AppKit:
        """Another kit object on the same node: a lifekit that restarted."""
        kit = AppKit()
        self.kits.append(kit)
        return kit

    def resource(self, tag: str, params: Mapping[str, Any]) -> Resource:
        """A resource whose parameters passed the schema and ``validate``, as a config's do."""
        checked = self.kit.schema.validate(tag, params)
        checked = dict(self.kit.validate(tag, checked))
        resource = Resource(tag=tag, kind="app", params=checked)
        self.resources[tag] = resource
        return resource

    def ctx(self, tag: str, *, timeout: float = ACTION_BOUND, probe: bool = False) -> ActionContext:
        """The context of one action."""
        return ActionContext(node=self.node, tag=tag, timeout=timeout, probe=probe)

    async def call(
        self, action: str, resource: Resource, *, kit: AppKit | None = None, probe: bool = False
    ) -> Result:
        """Run one action, bounded as the runtime would bound it."""
        kit = kit or self.kit
        with anyio.fail_after(ACTION_BOUND):
            result = await getattr(kit, action)(resource, self.ctx(resource.tag, probe=probe))
        assert isinstance(result, Result), result
        return result

    async def restore(self, resource: Resource, **kw: Any) -> Result:
        return await self.call("restore", resource, **kw)

    async def remove(self, resource: Resource, **kw: Any) -> Result:
        return await self.call("remove", resource, **kw)

    async def quickcheck(self, resource: Resource, **kw: Any) -> Result:
        return await self.call("quickcheck", resource, **kw)

    async def recover(self, resource: Resource, **kw: Any) -> Result:
        return await self.call("recover", resource, **kw)

    async def missing(self, resource: Resource, shown: str) -> None:
        """Quickcheck, as a probe and as a check, says not running and shows ``shown``."""
        for probe in (True, False):
            result = await self.quickcheck(resource, probe=probe)
            assert result.outcome is Outcome.NOT_RUNNING, result
            assert shown in result.reason

    async def eventually(
        self, resource: Resource, want: str, *, kit: AppKit | None = None, within: float = 10.0
    ) -> Result:
        """Quickcheck until the outcome is ``want`` (a process's death is seen asynchronously)."""
        result = await self.quickcheck(resource, kit=kit)
        with anyio.move_on_after(within):
            while result.outcome.value != want:
                await anyio.sleep(0.05)
                result = await self.quickcheck(resource, kit=kit)
        return result

    async def wait_until(self, condition: Callable[[], bool], *, within: float = 5.0) -> None:
        """Wait until ``condition()`` holds (another process's progress has no event)."""
        with anyio.fail_after(within):
            while not condition():  # noqa: ASYNC110 - polling /proc, there is nothing to await
                await anyio.sleep(0.01)

    async def teardown(self) -> None:
        # Remove through every kit object, so each reaps the children it started; a failure
        # here must not hide the test's own failure, and the marker sweep follows anyway.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + 30
            for kit in self.kits:
                for resource in self.resources.values():
                    await kit.remove(resource, self.ctx(resource.tag))


@pytest.fixture
async def harness(tmp_path: Path, marker: str) -> AsyncIterator[Harness]:
    """A fresh app kit on a node whose state directory is under ``tmp_path``."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        await h.teardown()


@pytest.fixture
def python() -> str:
    """The interpreter running the tests, for small ``python -c`` programs."""
    return sys.executable
