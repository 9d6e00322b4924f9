"""Local control API shared by the daemons: JSON lines over a unix socket (asyncio), one request
per line. Request: {"op": "...", ...}; reply: {"ok": true, "result": ...} or {"ok": false,
"error": "..."}. Handlers run in a thread executor, since they may block (netlink, libvirt).
`LocalApiClient` is the other end, for the CLI, the lab and the tests (gatekeeper and vnetd alike).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("softudc.localapi")

MAX_REPLY = 64 << 20  # bytes; the largest real reply (a VM or VNET listing) is far below this

# Errors whose message is meant for the caller (anything else is an internal error).
UserErrors = tuple[type[Exception], ...]


async def serve(path: str, ops: dict[str, Callable[..., Any]], user_errors: UserErrors = ()) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await _dispatch(ops, line, user_errors)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(handle, path=path, limit=1 << 20)
    os.chmod(path, 0o600)
    async with server:
        await server.serve_forever()


async def _dispatch(ops: dict[str, Callable[..., Any]], line: bytes, user_errors: UserErrors) -> dict[str, Any]:
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise ValueError
    except ValueError:
        return {"ok": False, "error": 'request must be one JSON object per line with an "op" string'}
    op = request.pop("op")
    fn = ops.get(op)
    if fn is None:
        return {"ok": False, "error": f"unknown op {op!r}; known: {', '.join(sorted(ops))}"}
    try:
        result = await asyncio.get_running_loop().run_in_executor(None, lambda: fn(**request))
    except TypeError as e:
        return {"ok": False, "error": f"{op}: bad arguments: {e}"}
    except user_errors as e:
        return {"ok": False, "error": f"{op}: {e}"}
    except Exception as e:
        log.exception("%s failed", op)
        return {"ok": False, "error": f"{op}: internal error: {e!r} (see the gatekeeper log)"}
    return {"ok": True, "result": result}


class LocalApiError(RuntimeError):
    """The daemon answered with an error (or not at all); the message says what to do."""


class LocalApiClient:
    """One request per connection to a daemon's local API (the gatekeeper's or vnetd's socket)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """The result of `op`; LocalApiError with the daemon's message if it refused."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            buf = self._read_line(s, op)
        if not buf:
            raise LocalApiError(f"the daemon at {self.path} closed the connection without answering {op}; "
                                "see its log")
        try:
            reply = json.loads(buf)
        except ValueError:
            raise LocalApiError(f"the daemon at {self.path} answered {op} with something that is not JSON; "
                                "is that socket a SoftUDC local API?") from None
        if not isinstance(reply, dict):
            raise LocalApiError(f"the daemon at {self.path} answered {op} with {type(reply).__name__}, "
                                "not a reply object; is that socket a SoftUDC local API?")
        if not reply.get("ok"):
            raise LocalApiError(str(reply.get("error", "unknown error")))
        return reply.get("result")

    def _read_line(self, s: socket.socket, op: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while not (chunks and chunks[-1].endswith(b"\n")):
            chunk = s.recv(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REPLY:
                raise LocalApiError(f"the daemon at {self.path} answered {op} with more than "
                                    f"{MAX_REPLY >> 20} MiB; refused")
            chunks.append(chunk)
        return b"".join(chunks)
