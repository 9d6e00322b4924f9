"""Local control API shared by the daemons: JSON lines over a unix socket (asyncio), one request
per line. Request: {"op": "...", ...}; reply: {"ok": true, "result": ...} or {"ok": false,
"error": "..."}. Handlers run in a thread executor, since they may block (netlink, libvirt).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("softudc.localapi")

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
