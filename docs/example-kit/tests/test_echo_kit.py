"""Tests of the echo kit: lifekit's conformance suite, plus what only this kit promises."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anyio
import pytest
from lifekit_example_echo import EchoKit

from lifekit.kit import ActionContext, LocalHost, NodeContext, Outcome, Resource
from lifekit.testing import KitConformance


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TestEchoKit(KitConformance):
    """Every conformance rule, on asyncio and on trio."""

    kit_factory = EchoKit

    @pytest.fixture
    def params(self) -> Mapping[str, Any]:
        return {"port": free_port()}

    @pytest.fixture
    def missing_params(self) -> Mapping[str, Any]:
        # The program the kit manages is not installed: quickcheck must say "not running".
        return {"port": free_port(), "command": ["/nonexistent/echo-server"]}


def test_the_kit_is_registered_in_the_lifekit_kits_group() -> None:
    (entry,) = [ep for ep in entry_points(group="lifekit.kits") if ep.name == "echo"]
    module = entry.load()
    (kit,) = module.lifekit_kits(node_name="n1")
    assert isinstance(kit, EchoKit)
    assert kit.kind == "echo"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.mark.anyio
async def test_a_restored_server_echoes_and_a_removed_one_is_gone(tmp_path: Path) -> None:
    kit = EchoKit()
    node = NodeContext(
        name="n1", host=LocalHost("n1"), state_dir=tmp_path, log=logging.getLogger("test")
    )
    port = free_port()
    resource = Resource("echo1", "echo", params=kit.schema.validate("echo1", {"port": port}))
    ctx = ActionContext(node=node, tag="echo1", timeout=15.0)
    await kit.open(node)
    try:
        assert (await kit.restore(resource, ctx)).outcome is Outcome.OK
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"hello\n")
            assert await stream.receive() == b"hello\n"
        assert (tmp_path / "echo-echo1.pid").exists()
    finally:
        assert (await kit.remove(resource, ctx)).outcome is Outcome.OK
        await kit.close()
    assert (await kit.quickcheck(resource, ctx)).outcome is Outcome.NOT_RUNNING
    assert not (tmp_path / "echo-echo1.pid").exists()
