"""The heartbeat book: flushed when it changed (one object per manager), nothing lost on close,
stale books ignored and removed; heartbeat_is_news for the controllers' loop (R11)."""

from __future__ import annotations

import time

from softudc.manager.heartbeats import (
    KIND,
    STALE_S,
    HeartbeatBook,
    heartbeat_is_news,
    heartbeat_times,
    merge_seen,
)
from softudc.manager.loop import HOST_DOWN_AFTER_S
from softudc.manager.store import Obj
from tests.unit.manager.test_loop import FakeStore


def book_obj(hosts: dict[str, float], flushed: float = 0.0, name: str = "m1") -> Obj:
    return Obj(KIND, name, 1, {"flushed": flushed or max(hosts.values(), default=0.0), "hosts": hosts}, {})


def test_the_book_is_written_only_when_it_changed_and_on_close() -> None:
    store = FakeStore()
    book = HeartbeatBook(store, "m1", every_s=60.0)  # the thread never flushes in this test
    assert not book.flush()  # nothing seen: nothing written
    book.seen("h1", 100.0)
    book.seen("h2", 101.0)
    book.seen("h1", 99.0)  # older than what it has: kept
    assert book.flush() and not book.flush()
    assert heartbeat_times(store.get(KIND, "m1")) == {"h1": 100.0, "h2": 101.0}
    book.seen("h2", 103.0)
    book.close()  # a clean stop writes what is left
    assert heartbeat_times(store.get(KIND, "m1")) == {"h1": 100.0, "h2": 103.0}
    assert [w[:2] for w in store.writes] == [("put", KIND)] * 2


def test_the_thread_flushes_about_every_interval() -> None:
    store = FakeStore()
    book = HeartbeatBook(store, "m1", every_s=0.05)
    for i in range(20):
        book.seen("h1", 100.0 + i)
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while heartbeat_times(store.get(KIND, "m1")).get("h1") != 119.0 and time.monotonic() < deadline:
        time.sleep(0.01)
    book.close()
    assert heartbeat_times(store.get(KIND, "m1")) == {"h1": 119.0}
    assert 1 <= book.flushes <= 10  # batched: not one write per heartbeat


def test_merge_takes_each_host_s_newest_and_ignores_stale_books() -> None:
    now = 10_000.0
    a = book_obj({"h1": now - 5, "h2": now - 1}, name="m1")
    b = book_obj({"h1": now - 2}, name="m2")
    gone = book_obj({"h3": now - STALE_S - 10}, name="m3")
    assert merge_seen([a, b, gone], now, {"h2": now - 3}) == {"h1": now - 2, "h2": now - 1}


def test_sweep_removes_other_managers_stale_books_only() -> None:
    store = FakeStore()
    now = time.time()
    store.put(KIND, "old", {"flushed": now - STALE_S - 1, "hosts": {"h1": now - STALE_S - 1}})
    store.put(KIND, "live", {"flushed": now, "hosts": {"h1": now}})
    store.put(KIND, "m1", {"flushed": now - STALE_S - 1, "hosts": {}})  # its own: kept
    book = HeartbeatBook(store, "m1")
    assert book.sweep(now) == ["old"]
    assert sorted(o.name for o in store.objects(KIND)) == ["live", "m1"]


def test_heartbeat_news_only_for_a_host_back_from_down_or_while_busy() -> None:
    seen = {"h1": 1000.0, "h2": 1000.0}
    before = book_obj({"h1": 1000.0, "h2": 1000.0})
    assert not heartbeat_is_news(before, book_obj({"h1": 1002.0, "h2": 1002.0}), seen, busy=False)
    assert heartbeat_is_news(before, book_obj({"h1": 1002.0}), seen, busy=True)  # a migration: every sign counts
    back = 1000.0 + HOST_DOWN_AFTER_S + 1
    assert heartbeat_is_news(before, book_obj({"h1": 1002.0, "h2": back}), seen, busy=False)
    # a newer time known from elsewhere (its stored report) means it was not down
    assert not heartbeat_is_news(None, book_obj({"h2": back}), {"h2": back - 2}, busy=False)
    assert heartbeat_is_news(None, book_obj({"h9": 1000.0}), seen, busy=False)  # never seen: judged once, a pass
    gone = Obj(KIND, "m1", 2, before.spec, {}, deleted=True)
    assert not heartbeat_is_news(before, gone, seen, busy=False)


def test_malformed_books_say_nothing() -> None:
    assert heartbeat_times(Obj(KIND, "m", 1, {"hosts": ["h1"]}, {})) == {}
    assert heartbeat_times(Obj(KIND, "m", 1, {"hosts": {"h1": "soon", "h2": True, "h3": 3}}, {})) == {"h3": 3.0}
    assert heartbeat_times(None) == {}
