"""Fixtures for the ip kit's tests: both anyio backends, small labs, and a kit on a lab node.

The kit runs in this process; its commands run inside a lab node through the node's
:class:`~lifekit.kit.Host`, wrapped in a :class:`CountingHost` that records every command line
so tests can count what a check cycle costs. Every resource a test makes is removed at
teardown, and the lab goes down after the test whatever happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from lifekit_ip import IpKit

from lifekit.kit import (
    ActionContext,
    Host,
    NodeContext,
    ProcessResult,
    Resource,
    Result,
    SpawnedProcess,
)
from lifekit.lab import Lab, LabSpec

#: Generous bound on one kit action in a test (DAD takes up to 2 s).
ACTION_BOUND = 20.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each anyio test on both backends."""
    return str(request.param)


class CountingHost:
    """A :class:`Host` that runs on another host and records every command line it runs."""

    def __init__(self, inner: Host) -> None:
        self.inner = inner
        self.name = inner.name
        self.argvs: list[tuple[str, ...]] = []

    async def run(self, argv: Sequence[str], **kw: Any) -> ProcessResult:
        self.argvs.append(tuple(argv))
        return await self.inner.run(argv, **kw)

    async def spawn(self, argv: Sequence[str], **kw: Any) -> SpawnedProcess:
        self.argvs.append(tuple(argv))
        return await self.inner.spawn(argv, **kw)

    def count(self, predicate: Callable[[tuple[str, ...]], bool]) -> int:
        """How many recorded command lines match."""
        return sum(1 for argv in self.argvs if predicate(argv))


class KitOnNode:
    """An :class:`IpKit` whose commands run on one lab node, called as the runtime would."""

    def __init__(self, lab: Lab, name: str, state_dir: Path) -> None:
        self.lab = lab
        self.name = name
        self.host = CountingHost(lab.node(name).host())
        state_dir.mkdir(parents=True, exist_ok=True)
        self.node = NodeContext(
            name=name, host=self.host, state_dir=state_dir, log=logging.getLogger("test.ip")
        )
        self.kit = IpKit()
        self.resources: dict[str, Resource] = {}

    def resource(self, tag: str, **params: Any) -> Resource:
        """A resource whose parameters passed the schema and ``validate``, as a config's do."""
        checked = self.kit.schema.validate(tag, params)
        resource = Resource(tag=tag, kind="ip", params=dict(self.kit.validate(tag, checked)))
        self.resources[tag] = resource
        return resource

    def ctx(self, tag: str | None, *, probe: bool = False) -> ActionContext:
        return ActionContext(node=self.node, tag=tag, timeout=ACTION_BOUND, probe=probe)

    async def call(self, action: str, resource: Resource, *, probe: bool = False) -> Result:
        """Run one action, bounded as the runtime would bound it."""
        with anyio.fail_after(ACTION_BOUND):
            result = await getattr(self.kit, action)(resource, self.ctx(resource.tag, probe=probe))
        assert isinstance(result, Result), result
        return result

    async def restore(self, resource: Resource) -> Result:
        return await self.call("restore", resource)

    async def remove(self, resource: Resource) -> Result:
        return await self.call("remove", resource)

    async def quickcheck(self, resource: Resource, *, probe: bool = False) -> Result:
        return await self.call("quickcheck", resource, probe=probe)

    async def recover(self, resource: Resource) -> Result:
        return await self.call("recover", resource)

    async def many(self, resources: Sequence[Resource]) -> Mapping[str, Result]:
        with anyio.fail_after(ACTION_BOUND):
            return await self.kit.quickcheck_many(resources, self.ctx(None))

    def addrs(self, iface: str | None = None) -> list[dict[str, Any]]:
        """The node's addresses (``ip -j addr show``), each with its interface's name."""
        import json  # noqa: PLC0415 - only here

        argv = ["ip", "-j", "addr", "show"] + (["dev", iface] if iface else [])
        links = json.loads(self.lab.node(self.name).run(argv).stdout)
        return [{**info, "ifname": link["ifname"]} for link in links for info in link["addr_info"]]

    def has(self, cidr: str, iface: str | None = None) -> bool:
        """Whether the node has exactly ``cidr`` (on ``iface``)."""
        ip, prefix = cidr.split("/")
        return any(a["local"] == ip and a["prefixlen"] == int(prefix) for a in self.addrs(iface))

    async def teardown(self) -> None:
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + 30
            for resource in self.resources.values():
                await self.kit.remove(resource, self.ctx(resource.tag))
            await self.kit.close()


LabMaker = Callable[..., Lab]


@pytest.fixture
def lab(lifekit_lab_factory: LabMaker) -> Lab:
    """Two nodes on ``public`` and ``hb1``, a client on ``public``, no LUN."""
    return lifekit_lab_factory(LabSpec(nodes=("n1", "n2"), networks=("public", "hb1"), lun_size=0))


@pytest.fixture
def make_kit(tmp_path: Path) -> Iterator[Callable[[Lab, str], KitOnNode]]:
    """``make_kit(lab, "n1")``: the kit on a node of ``lab`` (one per node, made on first use).

    At teardown each removes every resource it made and closes (outside any event loop, so a
    synchronous test may use it too).
    """
    kits: dict[tuple[str, str], KitOnNode] = {}

    def get(lab: Lab, name: str) -> KitOnNode:
        key = (lab.name, name)
        if key not in kits:
            kits[key] = KitOnNode(lab, name, tmp_path / lab.name / name)
        return kits[key]

    try:
        yield get
    finally:
        for kit in kits.values():
            anyio.run(kit.teardown)


@pytest.fixture
def on(lab: Lab, make_kit: Callable[[Lab, str], KitOnNode]) -> Callable[[str], KitOnNode]:
    """``on("n1")``: the kit on a node of the ``lab`` fixture's lab."""
    return lambda name: make_kit(lab, name)
