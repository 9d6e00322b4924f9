"""The app's one store watcher: every waiting stream woken by one read, what changed named once,
a stream too far behind told everything changed, and the watcher stopping with its last user."""

from __future__ import annotations

import asyncio
from collections import deque

from softudc.console import stream, watcher
from softudc.console.watcher import Watcher
from tests.unit.console.test_views import ADMIN, DEMO, Lab


def test_waiters_share_one_reader_and_see_the_change(lab: Lab) -> None:
    w = Watcher(lab.m, pace=0.01)
    reads = 0
    real = lab.m.store.revision

    def counted() -> int:
        nonlocal reads
        reads += 1
        return real()

    lab.m.store.revision = counted  # type: ignore[method-assign]

    async def run() -> list[tuple[int, list[tuple[str, str]] | None]]:
        w.users = 3
        start = w.rev
        waiting = [asyncio.create_task(w.wait(start, 5.0)) for _ in range(3)]
        await asyncio.sleep(0.1)
        await asyncio.to_thread(lab.m.store.put, "host", "h9", {"joined": 1})
        got = await asyncio.gather(*waiting)
        w.users = 0
        return got

    got = asyncio.run(asyncio.wait_for(run(), 10))
    assert all(rev > 0 and ("host", "h9") in (objs or []) for rev, objs in got)
    assert reads < 60  # one reader for three waiters (~10 reads in 0.1 s), not one each per tick


def test_a_wait_without_change_times_out_with_nothing(lab: Lab) -> None:
    w = Watcher(lab.m, pace=0.01)

    async def run() -> tuple[int, list[tuple[str, str]] | None]:
        w.users = 1
        try:
            return await w.wait(w.rev, 0.05)
        finally:
            w.users = 0

    assert asyncio.run(run()) == (w.rev, [])


def test_too_far_behind_means_everything(lab: Lab) -> None:
    lab.m.put_farm(ADMIN, "demo", DEMO, None)
    w = Watcher(lab.m, pace=0.01)
    w._batches = deque(maxlen=2)  # keep two batches

    async def run() -> None:
        w.users = 1
        rev = w.rev
        for n in range(3):
            await asyncio.to_thread(lab.m.store.put, "host", f"h{n}", {"joined": 1})
            rev = (await w.wait(rev, 5.0))[0]
        w.users = 0

    first = w.rev
    asyncio.run(asyncio.wait_for(run(), 10))
    assert w.since(first) is None  # the first batch was dropped
    assert w.since(w.rev) == []
    every = stream.names(None, lab.m.tokens.authenticate(f"Bearer {lab.viewer}"), lab.m)
    assert {"hosts", "farms", "farm-demo"} <= set(every)


def test_the_watcher_stops_with_its_last_user(lab: Lab) -> None:
    w = Watcher(lab.m, pace=0.01)

    async def run() -> bool:
        w.users = 1
        await w.wait(w.rev, 0.02)
        w.users = 0
        await asyncio.sleep(0.1)
        return w._task is not None and w._task.done()

    assert asyncio.run(run())
    assert watcher.KEPT >= 100
