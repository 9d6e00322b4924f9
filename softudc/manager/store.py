"""Desired state in SQLite (WAL), behind a small interface an etcd backend can implement too.

Every write gets the next value of one global revision; objects keep the revision they were last
written at, so `put(..., expect=rev)` is a compare-and-swap and `watch(since, timeout)` hands out
what changed after `since`, waking as soon as a write of this process commits (the manager's
controller loop runs on it; `changes(since)` is the same without waiting). Deletes leave a
tombstone until compacted, so a watcher learns about them. An event log records what happened,
for `describe`; events are not revisions (a watcher is not woken by one).

A name written again after a delete is a new object (audit R6, R28): it starts with an empty
status and without the old object's events, so nothing of a deleted farm (its VNET ids, its
instances, its history) passes to whoever creates that name next. The event log keeps the latest
MAX_EVENTS per object, and `compact()` drops old tombstones with their events.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL,
    spec TEXT NOT NULL, status TEXT NOT NULL DEFAULT '{}', deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name));
CREATE INDEX IF NOT EXISTS objects_revision ON objects(revision);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    type TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_object ON events(kind, name, id);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
"""

MAX_EVENTS = 1000  # per object: `describe` shows the latest; older ones are dropped as new ones come


class Conflict(RuntimeError):
    """The object changed since the caller read it (compare-and-swap failed); read it again."""


class NotLeader(RuntimeError):
    """A write fenced by a leadership was refused: another manager leads now (etcd compared the
    leader key's create revision). The controllers' pass that made it ends; nothing was written."""


@dataclass(frozen=True)
class Obj:
    kind: str
    name: str
    revision: int
    spec: dict[str, Any]
    status: dict[str, Any]
    deleted: bool = False


class Store(Protocol):
    """What the manager needs of its store; SqliteStore is one, EtcdStore (etcdstore.py) another.
    `put_event` records an event at a given time, `kinds` lists the kinds with a live object and
    `dump` is one consistent view (revision, live objects by kind and name, events oldest first),
    `load` and `load_events` write many new objects (kind, name, spec, status) and events (as
    `events` returns them) at once: backups (backup.py) need them."""

    def put(self, kind: str, name: str, spec: dict[str, Any], expect: int | None = None) -> int: ...
    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> int: ...
    def get(self, kind: str, name: str) -> Obj | None: ...
    def objects(self, kind: str) -> list[Obj]: ...
    def delete(self, kind: str, name: str, expect: int | None = None) -> int: ...
    def changes(self, since: int) -> list[Obj]: ...
    def watch(self, since: int, timeout: float) -> list[Obj]: ...
    def revision(self) -> int: ...
    def event(self, kind: str, name: str, type_: str, message: str) -> None: ...
    def put_event(self, kind: str, name: str, type_: str, message: str, at: float) -> None: ...
    def kinds(self) -> list[str]: ...
    def dump(self) -> tuple[int, list[Obj], list[dict[str, Any]]]: ...
    def load(self, objects: list[tuple[str, str, dict[str, Any], dict[str, Any]]]) -> int: ...
    def load_events(self, events: list[dict[str, Any]]) -> None: ...
    def events(self, kind: str | None = None, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]: ...
    def compact(self, before: int) -> int: ...
    def close(self) -> None: ...


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # The store holds every VNET master secret: the database and its -wal/-shm files are
        # created 0600 (umask 077 while SQLite creates them) and existing ones are narrowed.
        old_umask = os.umask(0o077)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we answer. With NORMAL, a power loss may roll back
            # an apply, a migration or a VNET key already handed to gatekeepers (audit R22).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        finally:
            os.umask(old_umask)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.chmod(self.path + suffix, 0o600)
        self._lock = threading.Lock()
        # Watchers wait on this; every committed write notifies it (under the same lock as writes).
        self._written = threading.Condition(self._lock)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._written.notify_all()

    def _next(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        return int(db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    def _check(self, db: sqlite3.Connection, kind: str, name: str, expect: int | None) -> tuple[int, bool] | None:
        row: tuple[int, bool] | None = db.execute(
            "SELECT revision, deleted FROM objects WHERE kind=? AND name=?", (kind, name)).fetchone()
        if expect is not None:
            current = 0 if row is None or row[1] else row[0]
            if current != expect:
                raise Conflict(f"{kind}/{name} is at revision {current}, not {expect}; read it again")
        return row

    def put(self, kind: str, name: str, spec: dict[str, Any], expect: int | None = None) -> int:
        """Create or update; a tombstone written again is a new object: empty status, no events."""
        with self._tx() as db:
            row = self._check(db, kind, name, expect)
            if row is None or row[1]:
                db.execute("DELETE FROM events WHERE kind=? AND name=?", (kind, name))
            rev = self._next(db)
            db.execute("INSERT INTO objects (kind, name, revision, spec, status, deleted) VALUES (?, ?, ?, ?, '{}', 0) "
                       "ON CONFLICT(kind, name) DO UPDATE SET revision=excluded.revision, spec=excluded.spec, "
                       "status=CASE WHEN objects.deleted THEN '{}' ELSE objects.status END, deleted=0",
                       (kind, name, rev, json.dumps(spec, sort_keys=True)))
            return rev

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> int:
        with self._tx() as db:
            row = self._check(db, kind, name, None)
            if row is None or row[1]:
                raise KeyError(f"{kind}/{name} does not exist")
            rev = self._next(db)
            db.execute("UPDATE objects SET status=?, revision=? WHERE kind=? AND name=?",
                       (json.dumps(status, sort_keys=True), rev, kind, name))
            return rev

    def delete(self, kind: str, name: str, expect: int | None = None) -> int:
        with self._tx() as db:
            row = self._check(db, kind, name, expect)
            if row is None or row[1]:
                raise KeyError(f"{kind}/{name} does not exist")
            rev = self._next(db)
            db.execute("UPDATE objects SET deleted=1, revision=? WHERE kind=? AND name=?", (rev, kind, name))
            return rev

    def _obj(self, row: tuple[Any, ...]) -> Obj:
        return Obj(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), bool(row[5]))

    def get(self, kind: str, name: str) -> Obj | None:
        with self._lock:
            row = self._db.execute("SELECT kind, name, revision, spec, status, deleted FROM objects "
                                   "WHERE kind=? AND name=? AND deleted=0", (kind, name)).fetchone()
        return self._obj(row) if row else None

    def objects(self, kind: str) -> list[Obj]:
        with self._lock:
            rows = self._db.execute("SELECT kind, name, revision, spec, status, deleted FROM objects "
                                    "WHERE kind=? AND deleted=0 ORDER BY name", (kind,)).fetchall()
        return [self._obj(r) for r in rows]

    def changes(self, since: int) -> list[Obj]:
        """Objects written (or deleted) after revision `since`, oldest first: a watch by polling."""
        with self._lock:
            rows = self._db.execute("SELECT kind, name, revision, spec, status, deleted FROM objects "
                                    "WHERE revision > ? ORDER BY revision", (since,)).fetchall()
        return [self._obj(r) for r in rows]

    def watch(self, since: int, timeout: float) -> list[Obj]:
        """What `changes(since)` returns, as soon as there is something: waits up to `timeout`
        seconds for a write, then returns [] if there was none. Writes of this process wake it at
        once; another process's (a second manager on the same file) are seen at the timeout."""
        with self._written:
            self._written.wait_for(lambda: self._revision() > since, max(timeout, 0.0))
        return self.changes(since)

    def revision(self) -> int:
        with self._lock:
            return self._revision()

    def _revision(self) -> int:
        """The latest revision; the caller holds the lock."""
        return int(self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0])

    def kinds(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT kind FROM objects WHERE deleted=0 ORDER BY kind").fetchall()
        return [r[0] for r in rows]

    def dump(self) -> tuple[int, list[Obj], list[dict[str, Any]]]:
        """The revision, every live object (by kind and name) and every event (oldest first), all
        read in one transaction: another connection's writes are all in or all out."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rev = self._revision()
                rows = self._db.execute("SELECT kind, name, revision, spec, status, deleted FROM objects "
                                        "WHERE deleted=0 ORDER BY kind, name").fetchall()
                events = self._db.execute("SELECT time, kind, name, type, message FROM events ORDER BY id").fetchall()
            finally:
                self._db.execute("COMMIT")
        return rev, [self._obj(r) for r in rows], [
            {"time": t, "kind": k, "name": n, "type": ty, "message": m} for t, k, n, ty, m in events]

    def load(self, objects: list[tuple[str, str, dict[str, Any], dict[str, Any]]]) -> int:
        """Write objects that do not exist yet (a restore into an empty store; a tombstone counts as
        absent, as for put), in one transaction; KeyError (and nothing written) if one exists.
        Returns the revision of the last."""
        with self._tx() as db:
            rev = self._revision()
            for kind, name, spec, status in objects:
                row = self._check(db, kind, name, None)
                if row is not None and not row[1]:
                    raise KeyError(f"{kind}/{name} exists already: load() is for an empty store")
                db.execute("DELETE FROM events WHERE kind=? AND name=?", (kind, name))
                rev = self._next(db)
                db.execute("INSERT INTO objects (kind, name, revision, spec, status, deleted) "
                           "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT(kind, name) DO UPDATE SET "
                           "revision=excluded.revision, spec=excluded.spec, status=excluded.status, deleted=0",
                           (kind, name, rev, json.dumps(spec, sort_keys=True), json.dumps(status, sort_keys=True)))
            return rev

    def load_events(self, events: list[dict[str, Any]]) -> None:
        """Add events (dicts as `events` returns them, oldest first) in one transaction, as a
        restore does; the retention of MAX_EVENTS per object is the backup's."""
        with self._tx() as db:
            db.executemany("INSERT INTO events (time, kind, name, type, message) VALUES (?, ?, ?, ?, ?)",
                           [(e["time"], e["kind"], e["name"], e["type"], e["message"]) for e in events])

    def event(self, kind: str, name: str, type_: str, message: str) -> None:
        self.put_event(kind, name, type_, message, time.time())

    def put_event(self, kind: str, name: str, type_: str, message: str, at: float) -> None:
        """Record an event at time `at` (restores keep the original times); keeps MAX_EVENTS per object."""
        with self._tx() as db:
            db.execute("INSERT INTO events (time, kind, name, type, message) VALUES (?, ?, ?, ?, ?)",
                       (at, kind, name, type_, message))
            # Retention: keep the object's latest MAX_EVENTS (an index range, cheap per insert).
            oldest_dropped = db.execute("SELECT id FROM events WHERE kind=? AND name=? ORDER BY id DESC LIMIT 1 "
                                        "OFFSET ?", (kind, name, MAX_EVENTS)).fetchone()
            if oldest_dropped:
                db.execute("DELETE FROM events WHERE kind=? AND name=? AND id <= ?", (kind, name, oldest_dropped[0]))

    def compact(self, before: int) -> int:
        """Drop tombstones written at or before revision `before`, with their events; a watcher
        further behind than that lists objects again. Returns how many were dropped."""
        with self._tx() as db:
            gone = db.execute("SELECT kind, name FROM objects WHERE deleted=1 AND revision <= ?", (before,)).fetchall()
            db.executemany("DELETE FROM events WHERE kind=? AND name=?", gone)
            db.execute("DELETE FROM objects WHERE deleted=1 AND revision <= ?", (before,))
            return len(gone)

    def events(self, kind: str | None = None, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest `limit` events, oldest first; of one kind and object when given."""
        where = " AND ".join(c for c, v in (("kind=?", kind), ("name=?", name)) if v is not None) or "1"
        args = [v for v in (kind, name) if v is not None]
        with self._lock:
            rows = self._db.execute(f"SELECT time, kind, name, type, message FROM events WHERE {where} "
                                    "ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{"time": t, "kind": k, "name": n, "type": ty, "message": m} for t, k, n, ty, m in reversed(rows)]
