"""Live updates: one server-sent-events stream per open page. It names what changed ("hosts",
"farm-NAME" for the farms the session may read, "tasks" for an admin's rollouts and plans) as the
manager's store revision moves (softudc/console/watcher.py: one reader of the store for every
stream), and htmx fetches the fragments that listen for that name. Bounded: at most MAX_STREAMS at
once (a further page gets 503 and htmx retries), a keep-alive comment every KEEPALIVE_S, closed
within ALIVE_S when the session logs out or its token is removed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from softudc.console.common import current, manager, sessions
from softudc.console.watcher import WATCH_S, Watcher
from softudc.manager.auth import Principal
from softudc.manager.service import Manager

router = APIRouter(prefix="/console", include_in_schema=False)
MAX_STREAMS = 32
ALIVE_S = 1.0  # how often a waiting stream checks that its session and client are still there
KEEPALIVE_S = 15.0
HOSTS_EVERY_S = 10.0  # host reports (capacity, state) change without a store write: refreshed this often


def names(objects: list[tuple[str, str]] | None, who: Principal, m: Manager) -> list[str]:
    """The SSE event names for changed (kind, name)s; None (too far behind): everything."""
    if objects is None:
        return ["hosts", "farms", "tasks", *(f"farm-{f['name']}" for f in m.list_farms(who))]
    out: list[str] = []
    for kind, name in objects:
        if kind == "farm" and who.can_read(name):
            out += ["hosts", f"farm-{name}", "farms"]
        elif kind == "host":
            out.append("hosts")
        elif kind in ("rollout", "plan") and who.role == "admin":
            out.append("tasks")
    return list(dict.fromkeys(out))


def changed(m: Manager, who: Principal, since: int) -> tuple[int, list[str]]:
    """The store's revision now and the SSE event names for what changed after `since`."""
    rev = m.store.revision()
    return rev, [] if rev == since else names([(o.kind, o.name) for o in m.store.changes(since)], who, m)


def frame(event: str, data: str = "") -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


def watcher(request: Request, pace: float = WATCH_S) -> Watcher:
    """The app's store watcher (made on first use)."""
    w: Watcher | None = getattr(request.app.state, "console_watcher", None)
    if w is None:
        w = request.app.state.console_watcher = Watcher(manager(request), pace)
    return w


async def events(request: Request, sid: str, who: Principal, pace: float = WATCH_S) -> AsyncIterator[bytes]:
    m, book, w = manager(request), sessions(request), watcher(request, pace)
    w.users += 1
    try:
        rev = w.rev
        last_sent = last_hosts = time.monotonic()
        yield b"retry: 2000\n\n"
        while book.alive(sid) and not await request.is_disconnected():
            rev, objects = await w.wait(rev, ALIVE_S)
            sent = await run_in_threadpool(names, objects, who, m) if objects != [] else []
            now = time.monotonic()
            if now - last_hosts >= HOSTS_EVERY_S:
                sent.append("hosts")
            last_hosts = now if "hosts" in sent else last_hosts
            for n in dict.fromkeys(sent):
                yield frame(n, str(rev))
            if sent:
                last_sent = now
            elif now - last_sent >= KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = now
        yield frame("logout")
    finally:
        w.users -= 1


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
