"""The controllers' loop on a fake store: it reconciles on news and on its timer, ignores its own
writes, judges host reports, outlives a failing pass and stops. FakeStore is also the store of
test_service_loop.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from softudc.manager.loop import HOST_DOWN_AFTER_S, ControllerLoop, Pass, StoreObserver, report_is_news
from softudc.manager.store import Conflict, Obj


class FakeStore:
    """The Store protocol in memory. Records every write with the thread that made it, and hands
    out changes through `watch` as the SQLite store does; `hold` keeps the watch from answering
    (the controllers then see nothing until `release`)."""

    def __init__(self) -> None:
        self.objs: dict[tuple[str, str], Obj] = {}
        self.rev = 0
        self.writes: list[tuple[str, str, str, str]] = []  # (op, kind, name, thread)
        self.log: list[dict[str, Any]] = []
        self._written = threading.Condition()
        self._open = threading.Event()
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _write(self, op: str, kind: str, name: str, obj: Obj) -> int:
        with self._written:
            self.rev += 1
            self.objs[(kind, name)] = Obj(obj.kind, obj.name, self.rev, obj.spec, obj.status, obj.deleted)
            self.writes.append((op, kind, name, threading.current_thread().name))
            self._written.notify_all()
            return self.rev

    def _live(self, kind: str, name: str) -> Obj | None:
        o = self.objs.get((kind, name))
        return None if o is None or o.deleted else o

    def put(self, kind: str, name: str, spec: dict[str, Any], expect: int | None = None) -> int:
        with self._written:
            old = self._live(kind, name)
            if expect is not None and (old.revision if old else 0) != expect:
                raise Conflict(f"{kind}/{name} changed; read it again")
            return self._write("put", kind, name, Obj(kind, name, 0, spec, old.status if old else {}))

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> int:
        with self._written:
            old = self._live(kind, name)
            if old is None:
                raise KeyError(f"{kind}/{name} does not exist")
            return self._write("status", kind, name, Obj(kind, name, 0, old.spec, status))

    def delete(self, kind: str, name: str, expect: int | None = None) -> int:
        with self._written:
            old = self._live(kind, name)
            if old is None:
                raise KeyError(f"{kind}/{name} does not exist")
            return self._write("delete", kind, name, Obj(kind, name, 0, old.spec, old.status, True))

    def get(self, kind: str, name: str) -> Obj | None:
        with self._written:
            return self._live(kind, name)

    def objects(self, kind: str) -> list[Obj]:
        with self._written:
            return sorted((o for (k, _), o in self.objs.items() if k == kind and not o.deleted), key=lambda o: o.name)

    def changes(self, since: int) -> list[Obj]:
        with self._written:
            return sorted((o for o in self.objs.values() if o.revision > since), key=lambda o: o.revision)

    def watch(self, since: int, timeout: float) -> list[Obj]:
        if not self._open.wait(timeout):
            return []
        with self._written:
            self._written.wait_for(lambda: self.rev > since, max(timeout, 0.0))
        return self.changes(since) if self._open.is_set() else []  # held meanwhile: nothing yet

    def revision(self) -> int:
        with self._written:
            return self.rev

    def event(self, kind: str, name: str, type_: str, message: str) -> None:
        self.put_event(kind, name, type_, message, time.time())

    def put_event(self, kind: str, name: str, type_: str, message: str, at: float) -> None:
        with self._written:
            self.log.append({"time": at, "kind": kind, "name": name, "type": type_, "message": message})

    def kinds(self) -> list[str]:
        with self._written:
            return sorted({k for (k, _), o in self.objs.items() if not o.deleted})

    def dump(self) -> tuple[int, list[Obj], list[dict[str, Any]]]:
        with self._written:
            return self.rev, [o for o in self.objs.values() if not o.deleted], list(self.log)

    def load(self, objects: list[tuple[str, str, dict[str, Any], dict[str, Any]]]) -> int:
        for kind, name, spec, status in objects:
            self.put(kind, name, spec)
            self.set_status(kind, name, status)
        return self.revision()

    def load_events(self, events: list[dict[str, Any]]) -> None:
        with self._written:
            self.log.extend(events)

    def events(self, kind: str | None = None, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        with self._written:
            found = [e for e in self.log if kind in (None, e["kind"]) and name in (None, e["name"])]
        return found[-limit:]

    def compact(self, before: int) -> int:
        return 0

    def close(self) -> None:
        pass

    def written_by(self, thread: str, op: str | None = None, kind: str | None = None) -> list[str]:
        return [n for o, k, n, t in self.writes if t == thread and op in (None, o) and kind in (None, k)]


class Controllers:
    """A reconcile that writes what a pass writes (a farm's status), counted."""

    def __init__(self, store: FakeStore, fail: bool = False) -> None:
        self.store, self.fail, self.runs = store, fail, 0

    def __call__(self) -> Pass:
        self.runs += 1
        if self.fail:
            raise RuntimeError("a bug in one pass")
        start = self.store.revision()
        for o in self.store.objects("farm"):
            self.store.set_status("farm", o.name, {"planned": self.runs})
        return Pass(start, self.store.revision(), busy=False)


def _loop(store: FakeStore, reconcile: Any, every_s: float = 60.0) -> ControllerLoop:
    loop = ControllerLoop(store, reconcile, every_s, name="test-controllers")
    loop.start()
    assert loop.settle(10)
    return loop


def test_the_loop_reconciles_on_news_and_ignores_its_own_writes() -> None:
    store = FakeStore()
    store.put("farm", "x", {})
    controllers = Controllers(store)
    loop = _loop(store, controllers)
    try:
        assert controllers.runs == 1 and store.written_by("test-controllers", "status") == ["x"]
        time.sleep(0.3)
        assert loop.settle(10) and controllers.runs == 1  # its own status write is no news
        store.put("farm", "y", {})  # a request's write
        assert loop.settle(10) and controllers.runs == 2 and loop.passes == 2
        assert threading.current_thread().name not in {t for *_, t in store.writes if _[0] == "status"}
    finally:
        loop.stop()
    assert not loop.running()


def test_a_host_report_that_moves_only_reported_is_no_news() -> None:
    store = FakeStore()
    store.put("host", "h1", {})
    store.set_status("host", "h1", {"vcpus": 8, "reported": time.time()})
    controllers = Controllers(store)
    loop = _loop(store, controllers)
    try:
        for _ in range(5):
            store.set_status("host", "h1", {"vcpus": 8, "reported": time.time()})
        assert loop.settle(10) and controllers.runs == 1
        store.set_status("host", "h1", {"vcpus": 4, "reported": time.time()})
        assert loop.settle(10) and controllers.runs == 2
        store.put("host", "h2", {})  # joined: news
        assert loop.settle(10) and controllers.runs == 3
    finally:
        loop.stop()


def test_the_timer_runs_passes_without_news() -> None:
    store = FakeStore()
    controllers = Controllers(store)
    loop = _loop(store, controllers, every_s=0.05)
    try:
        deadline = time.monotonic() + 10
        while controllers.runs < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert controllers.runs >= 3
    finally:
        loop.stop()


def test_a_failing_pass_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    controllers = Controllers(store, fail=True)
    loop = ControllerLoop(store, controllers, 60.0, name="test-controllers")
    loop.start()
    try:
        assert not loop.settle(0.3)  # nothing reconciled: settle says so at its bound
        assert loop.running() and "reconcile pass failed" in caplog.text
        controllers.fail = False
        store.put("farm", "x", {})
        assert loop.settle(10) and store.get("farm", "x").status == {"planned": controllers.runs}  # type: ignore[union-attr]
    finally:
        loop.stop()


def test_one_named_thread_stopped_by_stop() -> None:
    store = FakeStore()
    loop = _loop(store, Controllers(store))
    named = [t for t in threading.enumerate() if t.name == "test-controllers"]
    loop.start()  # a second start does nothing
    assert len(named) == 1 and len([t for t in threading.enumerate() if t.name == "test-controllers"]) == 1
    started = time.monotonic()
    loop.stop()
    assert not loop.running() and time.monotonic() - started < 5  # idle: within POLL_S
    store.put("farm", "x", {})
    assert not loop.settle(0.1) and not loop.running()  # stopped for good: nobody reconciles it


def _host(status: dict[str, Any], spec: dict[str, Any] | None = None, deleted: bool = False) -> Obj:
    return Obj("host", "h1", 1, spec or {}, status, deleted)


def test_report_is_news_judges_what_a_report_says() -> None:
    t = 1000.0
    before = _host({"vcpus": 8, "reported": t})
    assert not report_is_news(before, _host({"vcpus": 8, "reported": t + 2}), busy=False)
    assert report_is_news(before, _host({"vcpus": 8, "reported": t + 2}), busy=True)  # a migration moves on
    assert report_is_news(before, _host({"vcpus": 4, "reported": t + 2}), busy=False)
    assert report_is_news(before, _host({"vcpus": 8, "running": ["f--a-0"], "reported": t + 2}), busy=False)
    assert report_is_news(before, _host({"vcpus": 8, "reported": t + HOST_DOWN_AFTER_S + 1}), busy=False)  # back
    assert report_is_news(before, _host({"vcpus": 8, "reported": t}, {"state": "draining"}), busy=False)
    assert report_is_news(before, _host({}, deleted=True), busy=False)
    assert report_is_news(None, before, busy=False)


def test_a_pass_that_fails_after_writing_is_retried_at_a_bounded_rate() -> None:
    store = FakeStore()
    store.put("farm", "x", {})
    runs: list[int] = []

    def failing() -> Pass:
        runs.append(1)
        store.set_status("farm", "x", {"try": len(runs)})  # comes back as news: a retry
        raise RuntimeError("a bug in every pass")

    loop = ControllerLoop(store, failing, 60.0, name="test-controllers")
    loop.start()
    time.sleep(1.5)
    loop.stop()
    assert 1 <= len(runs) <= 4  # about one per POLL_S, not as fast as the core allows


def test_a_pass_counts_as_done_before_the_long_polls_are_woken() -> None:
    store = FakeStore()
    woken, release = threading.Event(), threading.Event()

    def after() -> None:  # a generation's many long polls: slow
        woken.set()
        release.wait(10)

    loop = ControllerLoop(store, Controllers(store), 60.0, name="test-controllers", after=after)
    loop.start()
    try:
        assert woken.wait(10)
        assert loop.settle(0.5)  # an apply waiting for its pass is answered meanwhile
    finally:
        release.set()
        loop.stop()


def test_a_watch_that_fails_now_and_then_does_not_end_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    real, failures = store.watch, [2]

    def flaky(since: int, timeout: float) -> list[Obj]:
        if failures[0]:
            failures[0] -= 1
            raise OSError("disk hiccup")
        return real(since, timeout)

    monkeypatch.setattr(store, "watch", flaky)
    controllers = Controllers(store)
    loop = ControllerLoop(store, controllers, 60.0, name="test-controllers")
    loop.start()
    try:
        store.put("farm", "x", {})
        assert loop.settle(15) and loop.running() and store.get("farm", "x").status  # type: ignore[union-attr]
    finally:
        loop.stop()


# --- roles (issue 11): the loop runs on the leader only; a follower observes ---------------------

def test_a_loop_whose_manager_no_longer_leads_makes_no_further_pass_and_ends() -> None:
    store = FakeStore()
    store.put("farm", "x", {})
    controllers, leading = Controllers(store), [True]
    marks: list[int] = []
    loop = ControllerLoop(store, controllers, 60.0, name="test-controllers", may_run=lambda: leading[0],
                          on_mark=marks.append)
    loop.start()
    try:
        assert loop.settle(10) and controllers.runs == 1
        assert marks and marks[-1] == loop.reconciled and marks == sorted(set(marks))  # each new one, published
        leading[0] = False  # stepped down
        store.put("farm", "y", {})  # news: but no pass, and no write of the loop's after the decision
        deadline = time.monotonic() + 10
        while loop.running():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert controllers.runs == 1 and store.written_by("test-controllers", "status") == ["x"]
    finally:
        loop.stop()


def test_a_followers_observer_moves_the_long_polls_on_what_desired_states_depend_on() -> None:
    store = FakeStore()
    changed = threading.Event()
    observer = StoreObserver(store, changed.set, name="test-follower")
    observer.start()
    try:
        time.sleep(0.1)
        store.put("keyepoch", "x", {})  # a counter: no desired state moves
        assert not changed.wait(0.5)
        store.put("farm", "x", {})  # the leader's pass wrote a farm (a status, say)
        assert changed.wait(5)
        assert "test-follower" in {t.name for t in threading.enumerate()}
    finally:
        observer.stop()
    assert "test-follower" not in {t.name for t in threading.enumerate()}


def test_a_heartbeat_flush_is_news_only_for_a_host_back_from_silence() -> None:
    store = FakeStore()
    now = time.time()
    store.put("host", "h1", {})
    store.set_status("host", "h1", {"vcpus": 8, "reported": now})
    store.put("farm", "x", {})
    controllers = Controllers(store)
    loop = _loop(store, controllers)
    try:
        store.put("heartbeat", "m1", {"flushed": now + 1, "hosts": {"h1": now + 1}})  # h1 alive, as it was
        assert loop.settle(10) and controllers.runs == 1
        store.put("heartbeat", "m1", {"flushed": now + 2, "hosts": {"h1": now + 2 + HOST_DOWN_AFTER_S}})
        assert loop.settle(10) and controllers.runs == 2  # silent longer than HOST_DOWN_AFTER_S: news
    finally:
        loop.stop()
