"""Each host's desired state, computed once per reconcile generation, and the long polls waiting
for it to move.

The controller loop ends every reconcile pass with `new_generation()`: the cache is dropped, the
desired state of each host with a waiting long poll is computed again, and only the hosts whose
etag moved are woken (a report from one host no longer wakes, and costs, every long poll). A
waiter is a callback, so an async long poll (a future on the server's event loop, woken with
`call_soon_threadsafe`) holds no thread while it waits.

A waiter registers before it reads the desired state: a generation that moves the etag after that
read wakes it, so no change falls between the read and the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import random
import threading
from collections.abc import Callable
from typing import Any

MAX_WAIT_S = 60.0  # longest long poll of a gatekeeper's desired state
# A poll with nothing new is answered after its wait less up to this share, at random: gatekeepers
# that polled together (a manager's restart, a pause) drift apart instead of timing out together
# round after round (at 1,000 hosts with wait=2, the herd's answers and next reports queued ~1.5 s).
JITTER = 0.15

Desired = dict[str, Any]


def etag(desired: Desired) -> str:
    """A short digest of a desired state: equal states, equal etags (keys sorted)."""
    return hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]


class LongPolls:
    """The desired-state cache of every host and the callbacks of its waiting long polls."""

    def __init__(self, compute: Callable[[str], Desired],
                 compute_many: Callable[[list[str]], dict[str, Desired]] | None = None) -> None:
        self._compute = compute  # host -> its desired state (without etag), read from the store
        # hosts -> theirs, the store read once for all (a new generation's waiting hosts)
        self._compute_many = compute_many or (lambda hosts: {h: compute(h) for h in hosts})
        self._lock = threading.Lock()
        self._generation = 0
        self._cache: dict[str, tuple[int, Desired, str]] = {}  # host -> (generation, desired, etag)
        self._waiters: dict[str, dict[int, Callable[[], None]]] = {}
        self._asked: set[str] = set()  # hosts that read their state in this generation
        self._ids = itertools.count()
        self.computed = 0  # desired states computed (cache misses): the cost the cache saves

    @property
    def generation(self) -> int:
        """The current generation (it moves at the end of every reconcile pass)."""
        with self._lock:
            return self._generation

    def current(self, host: str) -> Desired:
        """The host's desired state with its etag, computed at most once per generation."""
        hit = self._cached(host)
        if hit is not None:
            return hit
        with self._lock:
            generation = self._generation
        desired = self._compute(host)
        tag = etag(desired)
        with self._lock:
            self.computed += 1
            if self._generation == generation:  # else a pass ended meanwhile: it may be stale already
                self._cache[host] = (generation, desired, tag)
        return {**desired, "etag": tag}

    def _cached(self, host: str) -> Desired | None:
        with self._lock:
            self._asked.add(host)
            hit = self._cache.get(host)
            if hit is None or hit[0] != self._generation:
                return None
        return {**hit[1], "etag": hit[2]}

    def new_generation(self) -> list[str]:
        """After a reconcile pass: forget every cached state, compute again those of the waiting
        hosts and of every host that asked in the generation before (all in one read: a host
        between its report and its next poll would otherwise miss, and each miss reads the inputs
        on its own), and wake the waiting hosts whose etag moved. Returns them."""
        with self._lock:
            before = {h: c[2] for h, c in self._cache.items()}
            asked, self._asked = self._asked, set()
            self._generation += 1
            generation = self._generation
            self._cache.clear()
            waiting = sorted(self._waiters)
        hosts = sorted(set(waiting) | asked)
        fresh = {h: (d, etag(d)) for h, d in self._compute_many(hosts).items()} if hosts else {}
        with self._lock:
            self.computed += len(fresh)
            if self._generation == generation:
                self._cache.update({h: (generation, d, tag) for h, (d, tag) in fresh.items()})
        moved = [h for h in waiting if fresh[h][1] != before.get(h)]
        self.wake(moved)
        return moved

    def wake(self, hosts: list[str]) -> None:
        """Call the waiters of `hosts` (each wakes and reads its state again). The async ones of
        one event loop are woken by one call into it, not one each (a generation that moves a
        thousand hosts wrote a thousand times to the loop's wake-up pipe)."""
        with self._lock:
            callbacks = [cb for h in hosts for cb in self._waiters.get(h, {}).values()]
        futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for cb in callbacks:
            if isinstance(cb, _Woken):
                futures.setdefault(cb.loop, []).append(cb.future)
            else:
                cb()
        for loop, mine in futures.items():
            with contextlib.suppress(RuntimeError):  # the server's loop has closed: nobody waits on it any more
                loop.call_soon_threadsafe(_resolve_all, mine)

    def waiting(self) -> int:
        """Long polls waiting now (a metric)."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    def waiting_hosts(self) -> dict[str, int]:
        """Long polls waiting now, per host."""
        with self._lock:
            return {h: len(w) for h, w in self._waiters.items()}

    def _add(self, host: str, callback: Callable[[], None]) -> int:
        key = next(self._ids)
        with self._lock:
            self._waiters.setdefault(host, {})[key] = callback
        return key

    def _remove(self, host: str, key: int) -> None:
        with self._lock:
            mine = self._waiters.get(host, {})
            mine.pop(key, None)
            if not mine:
                self._waiters.pop(host, None)

    async def wait_async(self, host: str, since: str, wait: float) -> Desired:
        """The host's desired state once its etag is not `since`, or after `wait` seconds (at most
        MAX_WAIT_S, less up to JITTER of it): awaits a future on the running loop, no thread held
        meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT_S) * (1 - random.uniform(0, JITTER))
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            key = self._add(host, _Woken(loop, woken))
            try:
                desired = self._cached(host)
                if desired is None:  # a miss reads the store: off the event loop
                    desired = await asyncio.to_thread(self.current, host)
                left = deadline - loop.time()
                if desired["etag"] != since or left <= 0:
                    return desired
                with contextlib.suppress(TimeoutError):  # then read once more and answer
                    await asyncio.wait_for(woken, left)
            finally:
                self._remove(host, key)


@dataclasses.dataclass(frozen=True)
class _Woken:
    """An async long poll's waiter: its future, resolved on its own loop."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]

    def __call__(self) -> None:
        with contextlib.suppress(RuntimeError):  # the server's loop has closed: nobody waits on it any more
            self.loop.call_soon_threadsafe(_resolve_all, [self.future])


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for woken in futures:
        if not woken.done():
            woken.set_result(None)
