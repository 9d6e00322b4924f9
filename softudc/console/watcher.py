"""One watcher of the manager's store per app, shared by every open event stream: it reads the
store's revision every WATCH_S (one read however many pages are open; with etcd, a network call)
and, when it moved, which objects changed; streams wait on it and name what their session may see.
It runs while some stream uses it and keeps the last KEPT batches of changes, so a stream that fell
behind further than that is told everything may have changed."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool

from softudc.manager.service import Manager

WATCH_S = 0.1
KEPT = 256


@dataclass(frozen=True)
class Batch:
    before: int  # the revision the batch starts after
    after: int  # the revision it ends at
    objects: tuple[tuple[str, str], ...]  # (kind, name) written or deleted in between


class Watcher:
    def __init__(self, m: Manager, pace: float = WATCH_S) -> None:
        self.m, self.pace = m, pace
        self.rev = m.store.revision()
        self.users = 0
        self.reads = 0  # revision reads (softudc_console_store_reads_total)
        self._batches: deque[Batch] = deque(maxlen=KEPT)
        self._cond: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None

    def _running(self) -> asyncio.Condition:
        """Started (again) on the running loop when it is not running there."""
        loop = asyncio.get_running_loop()
        if self._cond is None or self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._cond = asyncio.Condition()
            self._task = loop.create_task(self._run(self._cond), name="softudc-console-watcher")
        return self._cond

    async def _run(self, cond: asyncio.Condition) -> None:
        while self.users > 0:
            await asyncio.sleep(self.pace)
            rev, objects = await run_in_threadpool(self._read, self.rev)
            if rev != self.rev:
                async with cond:
                    self._batches.append(Batch(self.rev, rev, objects))
                    self.rev = rev
                    cond.notify_all()

    def _read(self, since: int) -> tuple[int, tuple[tuple[str, str], ...]]:
        self.reads += 1
        rev = self.m.store.revision()
        if rev == since:
            return rev, ()
        return rev, tuple(dict.fromkeys((o.kind, o.name) for o in self.m.store.changes(since)))

    def since(self, rev: int) -> list[tuple[str, str]] | None:
        """The objects changed after `rev`; None when that is older than the batches kept."""
        if rev == self.rev:
            return []
        if not self._batches or rev < self._batches[0].before:
            return None
        return list(dict.fromkeys(o for b in self._batches if b.after > rev for o in b.objects))

    async def wait(self, rev: int, timeout: float) -> tuple[int, list[tuple[str, str]] | None]:
        """The revision now and what changed after `rev` (see `since`), waiting up to `timeout` s
        for a change when there is none yet. Only while counted in `users`."""
        cond = self._running()
        async with cond:
            if self.rev == rev:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait_for(lambda: self.rev != rev), timeout)
            return self.rev, self.since(rev)
