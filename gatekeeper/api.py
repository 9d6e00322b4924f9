"""The gatekeeper's local API: JSON lines over a unix socket (asyncio), one request per line.

Request: {"op": "vnet.create", "vnet": 10, ...}; reply: {"ok": true, "result": ...} or
{"ok": false, "error": "..."}. Handlers run in a thread executor: netlink calls block.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from gatekeeper.vnet.devices import DeviceError
from gatekeeper.vnet.service import ServiceError, VnetService

log = logging.getLogger("gatekeeper.api")


def operations(service: VnetService, status: Callable[[], dict[str, Any]]) -> dict[str, Callable[..., Any]]:
    return {
        "status": status,
        "vnet.create": service.create_vnet,
        "vnet.delete": service.delete_vnet,
        "vnet.list": service.list_vnets,
        "vnet.keys": service.set_keys,
        "port.attach": service.attach,
        "port.detach": service.detach,
        "varp.cache": service.varp_entries,
        "varp.flush": service.varp_flush,
        "varp.announce": service.announce,
        "counters": service.counters,
    }


async def serve(path: str, ops: dict[str, Callable[..., Any]]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await _dispatch(ops, line)
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


async def _dispatch(ops: dict[str, Callable[..., Any]], line: bytes) -> dict[str, Any]:
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
    except (ServiceError, DeviceError) as e:
        return {"ok": False, "error": f"{op}: {e}"}
    except Exception as e:
        log.exception("%s failed", op)
        return {"ok": False, "error": f"{op}: internal error: {e!r} (see the gatekeeper log)"}
    return {"ok": True, "result": result}
