"""Host liveness at scale: a report that says nothing new is not written to the store; the manager
that got it notes the time in its heartbeat book instead (decision 5 of issue 11).

    host_status ──► StoredHosts (reports.py): same as stored, stored one fresh? ──► book.seen(host)
                                                   otherwise ──► store.set_status (as before)
    book (memory: host -> last seen) ──► about once a second, when it changed:
        store.put("heartbeat", <manager id>, {"flushed": t, "hosts": {host: last seen}})

5,000 hosts reporting every 2 s cost about one write a second per manager, not 2,500. Nothing is
lost on a clean close (`close()` flushes); a crash loses at most the last second of heartbeats,
and a host's stored `reported` is refreshed every REFRESH_S anyway. `merge_seen` gives each host's
newest time over every manager's heartbeat object (objects of a manager gone longer than
STALE_S are ignored, and the book of a running manager removes them). `heartbeat_is_news` tells
the controllers' loop whether a heartbeat object may change a plan (audit R11).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping

from softudc.manager.controller import HOST_DOWN_AFTER_S
from softudc.manager.flushing import FlushedBook
from softudc.manager.store import Conflict, Obj, Store

KIND = "heartbeat"  # one object per manager, named by its id
FLUSH_EVERY_S = 1.0  # a changed book is written at most this often
STALE_S = 600.0  # a heartbeat object not flushed for this long belongs to a manager that is gone
SWEEP_EVERY_S = 60.0  # how often a book looks for other managers' stale objects
log = logging.getLogger("softudc.manager.heartbeats")


def default_manager_id() -> str:
    """This process's name among the managers of a group when none is given: hostname and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def heartbeat_times(obj: Obj | None) -> dict[str, float]:
    """The {host: last seen} of a heartbeat object ({} for none, a deleted one or a malformed one)."""
    if obj is None or obj.deleted:
        return {}
    hosts = obj.spec.get("hosts")
    if not isinstance(hosts, dict):
        return {}
    return {h: float(t) for h, t in hosts.items() if isinstance(t, int | float) and not isinstance(t, bool)}


def flushed_at(obj: Obj) -> float:
    at = obj.spec.get("flushed")
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0


def merge_seen(objs: Iterable[Obj], now: float, *more: Mapping[str, float]) -> dict[str, float]:
    """Each host's newest heartbeat over the managers' objects (those flushed within STALE_S) and
    any further books (`more`: this manager's unflushed one)."""
    out: dict[str, float] = {}
    books = [heartbeat_times(o) for o in objs if now - flushed_at(o) <= STALE_S]
    for book in (*books, *more):
        for host, at in book.items():
            if at > out.get(host, 0.0):
                out[host] = at
    return out


def heartbeat_is_news(before: Obj | None, after: Obj, last_seen: Mapping[str, float], busy: bool) -> bool:
    """Whether a write of a heartbeat object may change a plan or a desired state (audit R11): only
    while a migration is under way (`busy`: every sign of life may move it on), or when a host in it
    was silent for more than HOST_DOWN_AFTER_S before (it was down, or about to be judged so).

    `last_seen`: the newest time the caller (the loop) knows for each host, from the hosts' stored
    `reported` and earlier heartbeats; `before`, the object this one replaces, counts too. A host
    known to neither is news (it may come back from down: one pass, once). The caller updates
    its `last_seen` from `heartbeat_times(after)` afterwards."""
    if busy:
        return True
    if after.deleted:
        return False  # a stale book removed: nothing a plan depends on
    earlier = heartbeat_times(before)
    for host, at in heartbeat_times(after).items():
        known = max(last_seen.get(host, 0.0), earlier.get(host, 0.0))
        if at - known > HOST_DOWN_AFTER_S:
            return True
    return False


class HeartbeatBook(FlushedBook):
    """This manager's heartbeats: host -> last seen, in memory, flushed by a small thread (started
    by the first `seen`) at most every FLUSH_EVERY_S when something changed; `close()` flushes."""

    what = "the heartbeats"

    def __init__(self, store: Store, manager_id: str, every_s: float = FLUSH_EVERY_S) -> None:
        super().__init__(manager_id, every_s)
        self.store = store
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._dirty = False
        self._swept = 0.0
        self.flushes = 0  # objects written (a metric; tests count them)

    def seen(self, host: str, at: float) -> None:
        """`host` reported at `at` (wall clock, as a stored `reported`), nothing new in it."""
        with self._lock:
            if at > self._seen.get(host, 0.0):
                self._seen[host] = at
                self._dirty = True
            self._wake("heartbeats")

    def forget(self, host: str) -> None:
        """A host removed: its heartbeats go with the next flush."""
        with self._lock:
            if self._seen.pop(host, None) is not None:
                self._dirty = True

    def times(self) -> dict[str, float]:
        """The book as it is now (flushed or not)."""
        with self._lock:
            return dict(self._seen)

    def flush(self) -> bool:
        """Write the book if it changed since the last flush; True if it wrote."""
        with self._lock:
            if not self._dirty:
                return False
            hosts, self._dirty = {h: round(t, 3) for h, t in self._seen.items()}, False
        try:
            self.store.put(KIND, self.manager_id, {"flushed": round(time.time(), 3), "hosts": hosts})
        except BaseException:
            with self._lock:
                self._dirty = True  # try again next time
            raise
        self.flushes += 1
        return True

    def sweep(self, now: float) -> list[str]:
        """Remove the heartbeat objects of managers gone for STALE_S (not this one's); returns their
        ids. Compare-and-swap: a manager that flushed meanwhile keeps its object."""
        gone = []
        for o in self.store.objects(KIND):
            if o.name != self.manager_id and now - flushed_at(o) > STALE_S:
                try:
                    self.store.delete(KIND, o.name, expect=o.revision)
                except (Conflict, KeyError):
                    continue
                gone.append(o.name)
        return gone

    def _tick(self) -> None:
        self.flush()
        if time.monotonic() - self._swept > SWEEP_EVERY_S:
            self._swept = time.monotonic()
            self.sweep(time.time())

