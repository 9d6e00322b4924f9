"""Leadership of a group of managers: one leader runs the controllers' loop, every manager serves
the API (requests only store, so a follower needs no forwarding).

    SoloLeadership   one manager alone (tests, an embedded manager): leader from its start
    FileLeadership   managers sharing one SQLite file: an flock on `<state.db>.leader`
    EtcdLeadership   managers on an etcd cluster: the key `<prefix>/leader`, held with a lease
                     (softudc/manager/etcdleader.py)

Each runs a thread ("softudc-leader") that campaigns while this manager follows and keeps the
leadership while it leads, and calls back `elected(term, leaderless_s)` and `deposed(reason)`.
The leader publishes `reconciled` (the store revision its loop has looked at everything up to), so
a follower's `settle()` can wait for the leader to have seen a write. Every manager also shows
itself as a member (id, url, last_seen) for `softudc manager status`.

etcd: a leader renews its lease every ttl/4; if it has not renewed for ttl-1 s it steps down (a
watchdog thread, so an etcd call that hangs cannot delay it) before the lease can expire and
another manager campaign. Its own writes of the leader key compare the key's create revision, so
a stale leader can never overwrite a new one's key. `resign()` revokes the lease: a planned stop
hands over at once. `close()` without resigning is what a crash does (the lease runs out).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from softudc.atomicfile import write_atomic

LEADER_TTL_S = 3  # etcd: the leader key's lease
FILE_RETRY_S = 0.5  # SQLite: a follower tries the lock this often (and anyone after an error)
WATCH_S = 1.0  # etcd: a follower watches the leader key this long, then looks again
PUBLISH_GAP_S = 0.05  # the leader writes `reconciled` at most this often (coalesced)
FILE_PUBLISH_GAP_S = 0.5  # the same for the file's leader: each write is a file and a directory synced
# (at 1,000 hosts the loop marks a revision many times a second: 5 % of the daemon, H3's item 8);
# a follower's settle() waits that much longer, at most
MEMBER_EVERY_S = 3.0  # each manager refreshes its member entry this often
MEMBER_GONE_S = 15.0  # a member not refreshed for this long is not listed
log = logging.getLogger("softudc.manager.leader")

Elected = Callable[[int, float], None]  # term, seconds the group was without a leader (as seen here)
Deposed = Callable[[str], None]  # why this manager stopped leading


@dataclass(frozen=True)
class LeaderInfo:
    """What the leader publishes: who it is, where its API is, since when, its term and the
    revision its controllers have looked at everything up to."""

    id: str
    url: str
    since: float
    term: int
    reconciled: int

    def dump(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @staticmethod
    def load(data: bytes) -> LeaderInfo | None:
        """The info in `data`, or None when it is not one (a half-written or foreign value)."""
        try:
            d = json.loads(data)
            return LeaderInfo(str(d["id"]), str(d["url"]), float(d["since"]), int(d["term"]), int(d["reconciled"]))
        except (ValueError, KeyError, TypeError):
            return None


class Leadership(Protocol):
    """What the Manager needs of a leadership (module docstring)."""

    id: str
    url: str
    backend: str

    def start(self, elected: Elected, deposed: Deposed) -> None: ...
    def is_leader(self) -> bool: ...
    def leader(self) -> LeaderInfo | None: ...
    def publish(self, reconciled: int) -> None: ...
    def members(self) -> list[dict[str, Any]]: ...
    def fence(self, store: object) -> AbstractContextManager[None]: ...
    def resign(self) -> None: ...
    def close(self) -> None: ...


class SoloLeadership:
    """One manager alone: it leads from `start()` (synchronously) until it is closed."""

    backend = "solo"

    def __init__(self, id: str, url: str = "") -> None:
        self.id, self.url = id, url
        self._since = 0.0
        self._reconciled = -1
        self._leading = False

    def start(self, elected: Elected, deposed: Deposed) -> None:
        if not self._leading:
            self._leading, self._since = True, time.time()
            elected(1, 0.0)

    def is_leader(self) -> bool:
        return self._leading

    def leader(self) -> LeaderInfo | None:
        return LeaderInfo(self.id, self.url, self._since, 1, self._reconciled) if self._leading else None

    def publish(self, reconciled: int) -> None:
        self._reconciled = max(self._reconciled, reconciled)

    def members(self) -> list[dict[str, Any]]:
        return [{"id": self.id, "url": self.url, "last_seen": time.time()}]

    def fence(self, store: object) -> AbstractContextManager[None]:
        return contextlib.nullcontext()  # nobody else can lead

    def resign(self) -> None:
        self._leading = False

    def close(self) -> None:
        self._leading = False


class _Campaign:
    """The thread shared by the file and etcd leaderships: campaign while following, keep the
    leadership while leading; the callbacks; the published `reconciled`; the watchdog."""

    backend = ""
    keep_every_s = 0.5  # the leader's loop: renewals, publishing, member refresh
    publish_gap_s = PUBLISH_GAP_S

    def __init__(self, id: str, url: str) -> None:
        self.id, self.url = id, url
        self._elected: Elected = lambda term, gap: None
        self._deposed: Deposed = lambda reason: None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._leading = False
        self._deadline = float("inf")  # monotonic: past it, this leader has not renewed in time
        self._since = 0.0
        self._term = 0
        self._reconciled = -1
        self._published = -1
        self._last_seen_leader = time.monotonic()  # when a leader was last seen alive (or we started)
        self._member_at = 0.0

    # -- the Manager's side

    def start(self, elected: Elected, deposed: Deposed) -> None:
        with self._lock:
            if self._threads or self._stop.is_set():
                return
            self._elected, self._deposed = elected, deposed
            self._threads = [threading.Thread(target=self._run, name="softudc-leader", daemon=True),
                             threading.Thread(target=self._watchdog, name="softudc-leader-watchdog", daemon=True)]
        for t in self._threads:
            t.start()

    def fence(self, store: object) -> AbstractContextManager[None]:
        """The controllers' writes while leading (one pass): on a file, none needed (the lock is
        held while the process lives); EtcdLeadership makes etcd check its key."""
        return contextlib.nullcontext()

    def is_leader(self) -> bool:
        return self._leading and time.monotonic() < self._deadline

    def publish(self, reconciled: int) -> None:
        """The leader's loop has looked at everything up to `reconciled`: written out by the
        leadership's thread (coalesced: only the latest value is written)."""
        with self._lock:
            if reconciled > self._reconciled:
                self._reconciled = reconciled
                self._wake.set()

    def resign(self) -> None:
        """A planned stop: step down and let another manager lead at once."""
        self._halt()
        if self._step_down("it resigned (a planned stop)"):
            self._release()
        self._leave()

    def close(self) -> None:
        """Stop without resigning: what a crash does (the lock is dropped with its descriptor; an
        etcd lease runs out after its TTL)."""
        self._halt()
        self._step_down("it was closed without resigning")
        self._abandon()

    # -- the thread

    def _halt(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._leading:
                    self._keep_leading()
                else:
                    self._campaign()
                self._refresh_member()
            except Exception as e:  # a store that fails now and then must not end the campaign
                # A leader tries again soon: its renewal deadline runs (the watchdog steps it down).
                again = 0.1 if self._leading else FILE_RETRY_S
                log.warning("leadership (%s): %s; trying again in %.1f s", self.backend, e, again)
                self._stop.wait(again)

    def _keep_leading(self) -> None:
        """One round of the leader's loop: renew, publish, then wait for the next round."""
        renewed = self._renew()
        if not renewed:
            self._step_down(self._lost_reason)
            self._release()
            return
        with self._lock:
            value = self._reconciled
        if value != self._published and self._leading:
            if not self._write_info(self._info(value)):
                self._step_down("another manager holds the leader key")
                self._release()
                return
            self._published = value
            self._stop.wait(self.publish_gap_s)
        self._wake.wait(self.keep_every_s)
        self._wake.clear()

    def _watchdog(self) -> None:
        """Step down as soon as the leadership was not renewed in time, whatever the main thread
        is stuck in (an etcd call that hangs while a follower's lease clock runs)."""
        while not self._stop.wait(0.1):
            if self._leading and time.monotonic() >= self._deadline:
                self._step_down(f"it could not renew its leadership for {self._renew_window():.0f} s "
                                "(the store is unreachable from it); it stops before its lease can expire")

    def _become(self, term: int) -> None:
        gap = max(time.monotonic() - self._last_seen_leader, 0.0)
        with self._lock:
            self._leading, self._term, self._since = True, term, time.time()
            self._published = self._reconciled
        log.info("%s became leader (term %d, after %.1f s without one)", self.id, term, gap)
        self._elected(term, gap)

    def _step_down(self, reason: str) -> bool:
        """Stop leading (once); the Manager stops its controllers. True when it was leading."""
        with self._lock:
            if not self._leading:
                return False
            self._leading, self._deadline = False, float("inf")
        self._last_seen_leader = time.monotonic()
        log.warning("%s stepped down: %s", self.id, reason)
        self._deposed(reason)
        return True

    def _info(self, reconciled: int) -> LeaderInfo:
        return LeaderInfo(self.id, self.url, self._since, self._term, reconciled)

    def _refresh_member(self) -> None:
        if time.monotonic() - self._member_at >= MEMBER_EVERY_S:
            self._member_at = time.monotonic()
            self._write_member({"id": self.id, "url": self.url, "last_seen": time.time()})

    # -- what a backend provides

    _lost_reason = "its leadership was lost"

    def _renew_window(self) -> float:
        return 0.0

    def _campaign(self) -> None:
        raise NotImplementedError

    def _renew(self) -> bool:
        raise NotImplementedError

    def _write_info(self, info: LeaderInfo) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        """Give the leadership up (after stepping down)."""

    def _abandon(self) -> None:
        """Drop what is held without giving it up cleanly (close())."""

    def _leave(self) -> None:
        """Remove this manager's member entry (a planned stop)."""

    def _write_member(self, member: dict[str, Any]) -> None:
        raise NotImplementedError


class FileLeadership(_Campaign):
    """Managers sharing one SQLite file: whoever holds an flock on `<db>.leader` leads (the kernel
    drops it when the process dies); followers try every FILE_RETRY_S. The leader's info is in
    `<db>.leader.json`, each member's in `<db>.managers/<id>.json` (all written atomically)."""

    backend = "sqlite"
    publish_gap_s = FILE_PUBLISH_GAP_S

    def __init__(self, db: Path, id: str, url: str = "") -> None:
        super().__init__(id, url)
        self.db = Path(db)
        self.lock_path = Path(f"{db}.leader")
        self.info_path = Path(f"{db}.leader.json")
        self.members_dir = Path(f"{db}.managers")
        self._fd: int | None = None

    def _campaign(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._last_seen_leader = time.monotonic()
            self._stop.wait(FILE_RETRY_S)
            return
        self._fd = fd
        old = self._read_info()
        self._term = (old.term if old else 0) + 1
        self._since = time.time()
        self._write_info(self._info(self._reconciled))
        self._become(self._term)

    def _renew(self) -> bool:
        return self._fd is not None

    def _write_info(self, info: LeaderInfo) -> bool:
        write_atomic(self.info_path, info.dump(), 0o600)
        return True

    def _read_info(self) -> LeaderInfo | None:
        try:
            return LeaderInfo.load(self.info_path.read_bytes())
        except OSError:
            return None

    def leader(self) -> LeaderInfo | None:
        """The leader's info; None when nobody holds the lock (a crashed leader's file is stale)."""
        if self.is_leader():
            return self._info(self._reconciled)
        if not self._lock_held():
            return None
        return self._read_info()

    def _lock_held(self) -> bool:
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # a shared lock we took goes with it
        return False

    def _release(self) -> None:
        self._abandon()  # the record stays (it keeps the term count); unlocked, it names no leader

    def _abandon(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write_member(self, member: dict[str, Any]) -> None:
        self.members_dir.mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.members_dir / f"{self.id}.json", json.dumps(member).encode(), 0o600)

    def _leave(self) -> None:
        with contextlib.suppress(OSError):
            (self.members_dir / f"{self.id}.json").unlink()

    def members(self) -> list[dict[str, Any]]:
        seen = []
        for f in sorted(self.members_dir.glob("*.json")) if self.members_dir.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                m = json.loads(f.read_text())
                if isinstance(m, dict) and time.time() - float(m.get("last_seen", 0)) < MEMBER_GONE_S:
                    seen.append(m)
        return seen
