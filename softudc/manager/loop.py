"""The controllers' loop: one named thread that reconciles when the store says something changed
(its watch), and every RECONCILE_EVERY_S for the rules that depend on time alone (a silent host is
down, a migration stalls, a VNET key rotation takes its next step). Requests only store and
return; none of them plans anything (issue 10, audit R11).

What is news is judged here: a farm or a key written by a request, a host joined, removed or put
in another state, and a host report that says something its last one did not. A report that
moves nothing but `reported` is not news, unless the host was down before it or a migration is
under way (each report may move one on). The loop ignores its own writes: the farm statuses, keys
and key epochs its pass wrote, at the revisions the pass spanned (requests that write those kinds
hold the same lock as the pass, so nothing of theirs falls in that span).

`reconciled` is the store revision up to which every change has been looked at; `settle()` waits
for it (put_farm answers with the status its revision got; tests use it as a barrier). The loop
runs on the group's leader only (softudc/manager/leader.py): `may_run` is asked before every pass
(a manager that stepped down writes nothing more), `on_mark` publishes `reconciled` for the
followers. A follower runs a `StoreObserver` instead: it plans nothing, and moves its long polls'
generation when the store changes (the leader's pass wrote a farm's status, say).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from softudc.manager.heartbeats import KIND as HEARTBEAT
from softudc.manager.heartbeats import heartbeat_is_news, heartbeat_times
from softudc.manager.store import NotLeader, Obj, Store

RECONCILE_EVERY_S = 10.0  # a pass runs at least this often (time-based rules) even with no news
HOST_DOWN_AFTER_S = float(os.environ.get("SOFTUDC_HOST_DOWN_AFTER_S", "30"))  # as controller's: news after it
POLL_S = 1.0  # the longest the watch waits before it looks at the stop flag (close() takes at most this)
LOOP_KINDS = frozenset({"farm", "vnetkey", "keyepoch", "hafence"})  # what a pass writes (hafence: harestart.py)
QUIET_KINDS = frozenset({"keyepoch", "load"})  # a counter; the hosts' load (load.py): neither moves a plan
OBSERVED_KINDS = frozenset({"farm", "vnetkey", "host"})  # what a follower's long polls depend on
log = logging.getLogger("softudc.manager.loop")


@dataclass(frozen=True)
class Pass:
    """What one reconcile pass reports back: the revisions it spanned (read at its start and end
    under the lock) and whether a migration is under way."""

    start: int
    end: int
    busy: bool


def report_is_news(before: Obj | None, after: Obj, busy: bool) -> bool:
    """Whether a write of a host object may change any plan or desired state (audit R11)."""
    if before is None or after.deleted or before.deleted or after.spec != before.spec:
        return True  # joined, removed, another state or certificate
    if busy:
        return True  # a migration is under way: every report may move it on
    said = {k: v for k, v in after.status.items() if k != "reported"}
    if said != {k: v for k, v in before.status.items() if k != "reported"}:
        return True
    gap = float(after.status.get("reported", 0)) - float(before.status.get("reported", 0))
    return gap > HOST_DOWN_AFTER_S  # back after being down


class ControllerLoop:
    """Runs `reconcile` (one pass over every farm; returns a Pass) on the store's news and on a timer,
    then `after` (once the pass counts as done for `settle`)."""

    def __init__(self, store: Store, reconcile: Callable[[], Pass], every_s: float = RECONCILE_EVERY_S,
                 name: str = "softudc-controllers", after: Callable[[], object] = lambda: None,
                 may_run: Callable[[], bool] = lambda: True, on_mark: Callable[[int], object] = lambda rev: None
                 ) -> None:
        self.store, self._reconcile, self.every_s, self.name = store, reconcile, every_s, name
        self._after = after  # run after each pass is marked done (the long polls' new generation)
        self._may_run = may_run  # False once this manager is no longer the leader: the loop ends
        self._on_mark = on_mark  # each new `reconciled` (the leader publishes it)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._reconciled = threading.Condition()
        self.reconciled = -1  # every change up to this revision has been looked at
        self.passes = 0  # reconcile passes run by the loop (a metric; tests count them)
        self._hosts: dict[str, Obj] = {}  # each host as the loop last saw it (news is judged against it)
        self._beats: dict[str, Obj] = {}  # each manager's heartbeat object as the loop last saw it
        self._seen: dict[str, float] = {}  # each host's newest sign of life the loop knows (report or heartbeat)
        self._busy = True  # until the first pass says otherwise
        self._own = (0, 0)  # the span of revisions of the last pass: its own writes

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        with self._start_lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def spent(self) -> bool:
        """Started or stopped once: it cannot run (again); a manager elected again makes a new one."""
        with self._start_lock:
            return self._thread is not None or self._stopping.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current pass (within POLL_S when idle)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until every change stored before this call has been looked at (and reconciled if
        it was news); False if that took longer than `timeout` or the loop is not running."""
        target = self.store.revision()
        self.start()
        deadline = time.monotonic() + timeout
        with self._reconciled:
            while self.reconciled < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self.running():
                    return False
                self._reconciled.wait(min(left, POLL_S))
        return True

    def _run(self) -> None:
        since = self.store.revision()
        self._hosts = {o.name: o for o in self.store.objects("host")}
        self._beats = {o.name: o for o in self.store.objects(HEARTBEAT)}
        for o in self._hosts.values():
            self._saw(o.name, o.status.get("reported"))
        for o in self._beats.values():
            for host, at in heartbeat_times(o).items():
                self._saw(host, at)
        if not self._pass():
            return
        next_pass = time.monotonic() + self.every_s
        while not self._stopping.is_set():
            try:
                changes = self.store.watch(since, min(POLL_S, max(next_pass - time.monotonic(), 0.0)))
            except Exception:  # a store that fails now and then must not end the controllers
                log.exception("the store's watch failed; trying again in %.0f s", POLL_S)
                self._stopping.wait(POLL_S)
                continue
            if changes:
                since = max(since, changes[-1].revision)
            # Changes stored while a pass runs come with the next watch: a host's are judged as
            # usual, a request's farm write makes one more pass (cheap: it plans what is there).
            if self._news(changes) or time.monotonic() >= next_pass:
                if not self._pass():
                    return
                next_pass = time.monotonic() + self.every_s
            else:
                self._mark(since)

    def _news(self, changes: list[Obj]) -> bool:
        """Whether any of `changes` is news; remembers the hosts' latest objects either way."""
        news = False
        for o in changes:
            own = self._own[0] < o.revision <= self._own[1] and o.kind in LOOP_KINDS
            if o.kind == "host":
                news = report_is_news(self._hosts.get(o.name), o, self._busy) or news
                if o.deleted:
                    self._hosts.pop(o.name, None)
                else:
                    self._hosts[o.name] = o
                    self._saw(o.name, o.status.get("reported"))
            elif o.kind == HEARTBEAT:
                news = heartbeat_is_news(self._beats.get(o.name), o, self._seen, self._busy) or news
                self._beats[o.name] = o
                for host, at in heartbeat_times(o).items():
                    self._saw(host, at)
            elif not own and o.kind not in QUIET_KINDS:
                news = True
        return news

    def _saw(self, host: str, at: object) -> None:
        if isinstance(at, int | float) and not isinstance(at, bool) and at > self._seen.get(host, 0.0):
            self._seen[host] = float(at)

    def _pass(self) -> bool:
        """One reconcile pass; a failure is logged and the loop goes on (the next pass retries).
        False, and nothing done, when this manager may no longer run the controllers."""
        if not self._may_run():
            log.info("%s: no longer the leader; the controllers stop before their next pass", self.name)
            self._stopping.set()
            return False
        try:
            done = self._reconcile()
        except NotLeader as e:  # the store refused a fenced write: another manager leads already
            log.warning("%s: %s; the controllers stop", self.name, e)
            self._stopping.set()
            return False
        except Exception:  # the loop must outlive any bug in one pass: the next one retries
            log.exception("reconcile pass failed; retrying after the next change or in %.0f s", self.every_s)
            # What the failed pass wrote comes back as news: pause, so a bug that fails every
            # pass costs one pass per POLL_S, not a core.
            self._stopping.wait(POLL_S)
            return True
        self.passes += 1
        self._own, self._busy = (done.start, done.end), done.busy
        self._mark(done.start)  # every change up to its start is reconciled
        try:
            self._after()
        except Exception:  # waking long polls must not stop the controllers either
            log.exception("after a reconcile pass")
        return True

    def _mark(self, revision: int) -> None:
        with self._reconciled:
            if revision <= self.reconciled:
                return
            self.reconciled = revision
            self._reconciled.notify_all()
        self._on_mark(revision)


class StoreObserver:
    """A follower's light watch: plans nothing; after a change of what desired states depend on
    (OBSERVED_KINDS: the leader's pass wrote a farm's status, a key, a host), runs `changed` (the
    long polls' new generation: they wake on a follower as on the leader)."""

    def __init__(self, store: Store, changed: Callable[[], object], name: str = "softudc-follower") -> None:
        self.store, self._changed, self.name = store, changed, name
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        since = self.store.revision()
        while not self._stopping.is_set():
            try:
                changes = self.store.watch(since, POLL_S)
            except Exception:  # as the controllers' watch: try again
                log.exception("the store's watch failed; trying again in %.0f s", POLL_S)
                self._stopping.wait(POLL_S)
                continue
            if changes:
                since = max(since, changes[-1].revision)
            if any(o.kind in OBSERVED_KINDS for o in changes) and not self._stopping.is_set():
                try:
                    self._changed()
                except Exception:
                    log.exception("after a change of the store")
