"""Structured logging for a node: to stderr or a file, as text or JSON lines.

Every record may carry ``tag`` (the resource or hierarchy it is about) and ``node``; both are
printed when present. JSON lines have stable keys: ``ts``, ``level``, ``logger``, ``node``,
``tag``, ``msg`` (and ``exc`` with a traceback).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Literal

__all__ = ["configure_logging"]

LogFormat = Literal["text", "json"]


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tag = getattr(record, "tag", None)
        where = f" [{tag}]" if tag else ""
        text = (
            f"{_timestamp(record)} {record.levelname:<7} {record.name}{where} {record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "node": getattr(record, "node", None),
            "tag": getattr(record, "tag", None),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def configure_logging(
    *, level: str | int = "INFO", file: str | Path | None = None, format: LogFormat = "text"
) -> logging.Handler:
    """Send lifekit's logs to stderr (or ``file``) in ``format``; return the handler.

    Only the ``lifekit`` logger tree is configured; an embedding application's own logging is
    left alone.
    """
    if format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {format!r}")
    handler: logging.Handler
    if file is not None:
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if format == "json" else _TextFormatter())
    root = logging.getLogger("lifekit")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    root.propagate = False
    return handler
