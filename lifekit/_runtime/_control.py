"""The local control socket: a permission-checked Unix socket speaking JSON lines.

One request per line, one response per line. A request is ``{"op": ..., ...}``; a response is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. Operations: ``status``
(the status document), ``in_service`` / ``out_of_service`` (``"root": TAG``, returns at once).

Access control, in depth: the socket's directory is created 0700, the socket is 0600, and every
connection's peer credentials (``SO_PEERCRED``) must belong to root or to the user running the
node, whatever the file modes say. Hostile input (too long, not JSON, unknown operation, wrong
types) gets an error response and changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from lifekit.errors import ControlError

__all__ = ["MAX_REQUEST", "control_request", "serve_control"]

_log = logging.getLogger("lifekit.control")

#: The longest request line accepted, in bytes.
MAX_REQUEST = 65536
#: Protocol version spoken; requests may carry ``"version"``; a larger one is refused.
PROTOCOL_VERSION = 1


def _peer_uid(stream: anyio.abc.SocketStream) -> int:
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610 - not Django
    data = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", data)
    return int(uid)


async def _read_line(stream: anyio.abc.ByteReceiveStream, limit: int) -> bytes:
    buffer = b""
    while b"\n" not in buffer:
        if len(buffer) > limit:
            raise ControlError(f"request longer than {limit} bytes")
        try:
            chunk = await stream.receive(4096)
        except anyio.EndOfStream:
            break
        buffer += chunk
    line, _, _ = buffer.partition(b"\n")
    if len(line) > limit:
        raise ControlError(f"request longer than {limit} bytes")
    return line


def _handle(node: Any, request: object) -> Any:
    if not isinstance(request, dict):
        raise ControlError('a request must be a JSON object like {"op": "status"}')
    version = request.get("version", PROTOCOL_VERSION)
    if not isinstance(version, int) or version > PROTOCOL_VERSION:
        raise ControlError(
            f"protocol version {version!r} is not supported (this node speaks "
            f"{PROTOCOL_VERSION}); upgrade lifekit on this node"
        )
    op = request.get("op")
    if op == "status":
        return node.status()
    if op in ("in_service", "out_of_service"):
        root = request.get("root")
        if not isinstance(root, str) or root not in node.model.hierarchies:
            known = ", ".join(sorted(node.model.hierarchies))
            raise ControlError(f"'root' must name a hierarchy (got {root!r}; known: {known})")
        if op == "in_service":
            node.request_in_service(root)
        else:
            node.request_out_of_service(root)
        return {"requested": op, "root": root}
    raise ControlError(
        f"unknown operation {op!r}; valid operations: status, in_service, out_of_service"
    )


async def serve_control(
    node: Any,
    path: str | Path,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``node``'s control socket at ``path`` until cancelled; remove it afterwards.

    :raises ControlError: another live process already serves that path.
    """
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    if path.exists() or path.is_symlink():
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: its server is gone
        else:
            raise ControlError(
                f"another lifekit node already serves {path}; stop it, or pass another --socket"
            )
    allowed = {0, os.geteuid()}
    old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
    try:
        listener = await anyio.create_unix_listener(path)
    finally:
        os.umask(old_umask)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            uid = _peer_uid(stream)
            response: dict[str, Any]
            try:
                # Read the (bounded) request even from a refused peer, so it gets the refusal
                # as an answer instead of a broken pipe.
                with anyio.fail_after(10):
                    line = await _read_line(stream, MAX_REQUEST)
                if uid not in allowed:
                    _log.warning("refused a control connection from uid %d", uid)
                    raise ControlError(  # noqa: TRY301 - answered like every other refusal
                        f"permission denied: uid {uid} may not control this node"
                    )
                response = {"ok": True, "result": _handle(node, json.loads(line))}
            except (ControlError, ValueError, TimeoutError) as exc:
                response = {"ok": False, "error": str(exc) or type(exc).__name__}
            # If the client left, nothing was changed on its behalf.
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(json.dumps(response).encode() + b"\n")

    try:
        async with listener:
            task_status.started()
            await listener.serve(handle)
    finally:
        path.unlink(missing_ok=True)


async def control_request(
    path: str | Path, request: dict[str, Any], *, timeout: float = 10.0
) -> Any:
    """Send one request to a node's control socket and return its result.

    :raises ControlError: the node cannot be reached, or it refused the request.
    """
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_unix(path)
            async with stream:
                await stream.send(json.dumps(request).encode() + b"\n")
                line = await _read_line(stream, 64 * 1024 * 1024)
    except (OSError, TimeoutError) as exc:
        raise ControlError(
            f"cannot reach a lifekit node at {path}: {exc}; is `lifekit up` running there?"
        ) from exc
    try:
        response = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"the node at {path} sent an invalid response") from exc
    if not response.get("ok"):
        raise ControlError(str(response.get("error", "request refused")))
    return response.get("result")
