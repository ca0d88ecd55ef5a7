"""The local control socket: a permission-checked Unix socket speaking JSON lines.

One request per line, one response per line. A request is ``{"op": ..., ...}``; a response is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. Operations: ``status``
(the status document), ``in_service`` / ``out_of_service`` (``"root": TAG``, returns at once).

Access control, in depth: the socket's directory is created 0700 (an existing one must not be
writable by others), the socket is created 0600, and every
connection's peer credentials (``SO_PEERCRED``) must belong to root or to the user running the
node, whatever the file modes say. Hostile input (too long, not JSON, unknown operation, wrong
types) gets an error response and changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from lifekit.errors import ControlError

__all__ = ["MAX_REQUEST", "control_request", "open_control_listener", "serve_control"]

_log = logging.getLogger("lifekit.control")

#: The longest request line accepted, in bytes.
MAX_REQUEST = 65536
#: Protocol version spoken; requests may carry ``"version"``; a larger one is refused.
PROTOCOL_VERSION = 1


def _peer_uid(stream: anyio.abc.SocketStream) -> int:
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
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


async def open_control_listener(path: str | Path) -> anyio.abc.SocketListener:
    """Claim the control socket at ``path``: call it before starting the node.

    Its directory is created 0700, or must already be a real directory owned by root or this
    user that nobody else can write to or enter. A socket left by a dead node is replaced;
    anything else at ``path`` is never touched.

    :raises ControlError: another live node serves ``path``, or the path or its directory is
        unsafe (the message says how to fix it).
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ControlError(f"cannot create the control socket's directory {parent}: {exc}") from exc
    info = os.lstat(parent)
    me = os.geteuid()
    if not stat.S_ISDIR(info.st_mode):
        raise ControlError(f"{parent} must be a directory, not a link or a file")
    if info.st_uid not in (0, me):
        raise ControlError(
            f"{parent} belongs to uid {info.st_uid}; the control socket's directory must "
            f"belong to root or to uid {me}"
        )
    if info.st_mode & 0o022:
        raise ControlError(
            f"{parent} is writable by others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"fix it with `chmod go-w {parent}`"
        )
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise ControlError(
                f"{path} exists and is not a socket; lifekit will not remove it: move it away "
                "or pass another --socket"
            )
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(str(path))
        except OSError:
            path.unlink()  # a socket whose server is gone
        else:
            raise ControlError(
                f"another lifekit node already serves {path}; stop it, or pass another --socket"
            )
    return await anyio.create_unix_listener(path, mode=0o600)


async def serve_control(
    node: Any,
    path_or_listener: str | Path | anyio.abc.SocketListener,
    *,
    max_connections: int = 16,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``node``'s control socket until cancelled; remove the socket afterwards.

    :param path_or_listener: a path, or a listener from :func:`open_control_listener` (claim
        it before starting the node, so a second node never disturbs the first).
    :param max_connections: connections handled at once; more wait their turn.
    :raises ControlError: as :func:`open_control_listener`.
    """
    if isinstance(path_or_listener, str | Path):
        listener = await open_control_listener(path_or_listener)
    else:
        listener = path_or_listener
    path = Path(str(listener.extra(anyio.abc.SocketAttribute.local_address)))
    allowed = {0, os.geteuid()}
    limit = anyio.CapacityLimiter(max_connections)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with limit, stream:
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
            except Exception as exc:  # noqa: BLE001
                # Whatever one request provokes (a RecursionError from hostile JSON, a node
                # that stopped acting) is that request's error, never the server's end.
                _log.exception("control request failed")
                response = {"ok": False, "error": f"request failed: {exc!r}"}
            # A client that does not read its answer gets 10 s, then loses it; if it left,
            # nothing was changed on its behalf.
            with (
                suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
                anyio.move_on_after(10),
            ):
                await stream.send(json.dumps(response).encode() + b"\n")

    try:
        async with listener:
            task_status.started()
            await listener.serve(handle)
    finally:
        # Unlinking a local socket file does not block in any way that matters here.
        path.unlink(missing_ok=True)  # noqa: ASYNC240


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
