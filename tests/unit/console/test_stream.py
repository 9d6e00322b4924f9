"""The live stream: what changed is named (only farms the session may read), a logout closes the
stream, and streams are capped."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from softudc.console import stream
from softudc.console.common import sessions
from tests.unit.console.test_views import ADMIN, DEMO, Lab


def test_changed_names_readable_farms_and_hosts(lab: Lab) -> None:
    viewer = lab.m.tokens.authenticate(f"Bearer {lab.viewer}")
    rev = lab.m.store.revision()
    assert stream.changed(lab.m, viewer, rev) == (rev, [])
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    lab.m.put_farm(ADMIN, "other", DEMO.replace("name: demo", "name: other", 1), None)
    now, names = stream.changed(lab.m, viewer, rev)
    assert now > rev and "farm-demo" in names and "hosts" in names
    assert not any("other" in n for n in names)  # a farm it may not read is never named
    lab.m.store.put("host", "h1", {"joined": 1})
    assert stream.changed(lab.m, ADMIN, now)[1] == ["hosts"]


class _Request:
    """What `stream.events` reads of a request: the app's state and whether the client left."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}

    async def is_disconnected(self) -> bool:
        return False


def test_a_change_is_sent_and_logout_closes_the_stream(lab: Lab) -> None:
    req: Any = _Request(SimpleNamespace(state=SimpleNamespace(manager=lab.m)))
    s, who = sessions(req).login(lab.admin)

    async def run() -> list[bytes]:
        got: list[bytes] = []
        async for chunk in stream.events(req, s.sid, who, pace=0.01):
            got.append(chunk)
            if len(got) == 1:
                await asyncio.to_thread(lab.m.put_farm, ADMIN, "demo", DEMO, None)
            if b"farm-demo" in chunk:
                sessions(req).logout(s.sid)
        return got

    got = asyncio.run(asyncio.wait_for(run(), 10))
    assert any(c.startswith(b"event: farm-demo\n") for c in got)
    assert got[-1] == b"event: logout\ndata: \n\n"


def test_streams_are_capped(lab: Lab) -> None:
    c = lab.client(lab.admin)
    lab.app.state.console_streams = stream.MAX_STREAMS
    r = c.get("/console/stream")
    assert r.status_code == 503 and "too many" in r.text
    assert lab.client().get("/console/stream").status_code == 401
