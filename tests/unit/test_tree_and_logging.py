"""The live status tree and structured logging."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifekit import Resource, build_model
from lifekit._engine import Engine
from lifekit._runtime._logging import configure_logging
from lifekit._runtime._status import status_document
from lifekit._runtime._tree import MAX_DEPTH, render_tree


def _document(resources: list[Resource]) -> dict:
    model = build_model(resources, default_nodes=["n1"])
    return status_document(
        node="n1",
        model=model,
        snapshot=Engine(model).snapshot(),
        wall_now=1_800_000_000.0,
        monotonic_now=0.0,
        uptime=1.0,
        engine_error=None,
    )


def test_tree_shows_each_resource_under_its_parents() -> None:
    text = render_tree(
        _document(
            [
                Resource("disk", "x"),
                Resource("fs", "x", depends_on=["disk"]),
                Resource("ip", "x"),
                Resource("nfs", "x", depends_on=["fs", "ip"]),
            ]
        )
    )
    lines = text.splitlines()
    nfs = next(i for i, line in enumerate(lines) if line.startswith("nfs "))
    assert lines[nfs + 1].strip().startswith("└─ fs")
    assert lines[nfs + 2].strip().startswith("└─ disk")
    assert lines[nfs + 3].strip().startswith("└─ ip")
    assert "UNKNOWN" in lines[nfs]


def test_a_1000_long_chain_renders_without_recursion_and_is_summarised() -> None:
    chain = [Resource("r0", "x")] + [
        Resource(f"r{i}", "x", depends_on=[f"r{i - 1}"]) for i in range(1, 1000)
    ]
    text = render_tree(_document(chain))
    assert "deeper resources not shown" in text
    assert len(text.splitlines()) <= MAX_DEPTH + 10


@pytest.fixture
def restore_lifekit_logging() -> Iterator[None]:
    logger = logging.getLogger("lifekit")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.mark.usefixtures("restore_lifekit_logging")
def test_json_logs_carry_the_tag(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    configure_logging(level="info", file=path, format="json")
    logging.getLogger("lifekit.node").info("ISP -> OSF: %s", "gone", extra={"tag": "web"})
    logging.getLogger("lifekit.node").debug("not shown")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["tag"] == "web"
    assert records[0]["msg"] == "ISP -> OSF: gone"
    assert records[0]["level"] == "INFO"
    assert records[0]["ts"].endswith("Z")


@pytest.mark.usefixtures("restore_lifekit_logging")
def test_text_logs_show_the_tag(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    configure_logging(level="debug", file=path, format="text")
    logging.getLogger("lifekit.kit").warning("slow", extra={"tag": "db"})
    assert "[db] slow" in path.read_text()


def test_unknown_log_format_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="'text' or 'json'"):
        configure_logging(format="yaml")  # type: ignore[arg-type]
