"""Live updates: one server-sent-events stream per open page. It names what changed ("hosts",
"farm-NAME" for the farms the session may read, "tasks" for an admin's rollouts) as the manager's
store revision moves, and htmx fetches the fragments that listen for that name. Bounded: at most
MAX_STREAMS at once (a further page gets 503 and htmx retries), a keep-alive comment every
KEEPALIVE_S, closed when the session logs out or its token is removed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from softudc.console.common import current, manager, sessions
from softudc.manager.auth import Principal
from softudc.manager.service import Manager

router = APIRouter(prefix="/console", include_in_schema=False)
MAX_STREAMS = 32
POLL_S = 0.5  # how often the store's revision is read
KEEPALIVE_S = 15.0
HOSTS_EVERY_S = 10.0  # host reports (capacity, state) change without a store write: refreshed this often


def changed(m: Manager, who: Principal, since: int) -> tuple[int, list[str]]:
    """The store's revision now and the SSE event names for what changed after `since`."""
    rev = m.store.revision()
    if rev == since:
        return rev, []
    names: list[str] = []
    for o in m.store.changes(since):
        if o.kind == "farm" and who.can_read(o.name):
            names += ["hosts", f"farm-{o.name}", "farms"]
        elif o.kind == "host":
            names.append("hosts")
        elif o.kind == "rollout" and who.role == "admin":
            names.append("tasks")
    return rev, list(dict.fromkeys(names))


def frame(event: str, data: str = "") -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def events(request: Request, sid: str, who: Principal, pace: float = POLL_S) -> AsyncIterator[bytes]:
    m, book = manager(request), sessions(request)
    rev = await run_in_threadpool(m.store.revision)
    last_sent = last_hosts = time.monotonic()
    yield b"retry: 2000\n\n"
    while book.alive(sid) and not await request.is_disconnected():
        await asyncio.sleep(pace)
        rev, names = await run_in_threadpool(changed, m, who, rev)
        now = time.monotonic()
        if now - last_hosts >= HOSTS_EVERY_S:
            names.append("hosts")
        last_hosts = now if "hosts" in names else last_hosts
        for n in dict.fromkeys(names):
            yield frame(n, str(rev))
        if names:
            last_sent = now
        elif now - last_sent >= KEEPALIVE_S:
            yield b": keep-alive\n\n"
            last_sent = now
    yield frame("logout")


@router.get("/stream")
async def stream(request: Request) -> Response:
    s, who = current(request)
    state = request.app.state
    if getattr(state, "console_streams", 0) >= MAX_STREAMS:
        return PlainTextResponse(f"too many live streams (at most {MAX_STREAMS}); retry later", status_code=503)

    async def counted() -> AsyncIterator[bytes]:
        state.console_streams = getattr(state, "console_streams", 0) + 1
        try:
            async for chunk in events(request, s.sid, who):
                yield chunk
        finally:
            state.console_streams -= 1

    return StreamingResponse(counted(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
