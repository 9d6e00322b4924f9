"""The manager's store in etcd (issue 11): what SqliteStore does, shared by several managers.

Layout under the prefix (default `/softudc`; kinds and names are percent-encoded in keys):

    <prefix>/obj/<kind>/<name>        JSON {"spec", "status", "deleted"}; its revision is the key's
                                      etcd mod_revision
    <prefix>/revision                 written in the same txn as every object write: its
                                      mod_revision is `revision()`, so events, the leader key and
                                      anything else written under the prefix do not count
    <prefix>/ev/<kind>/<name>/<seq>   one event, JSON {"time", "type", "message"}; ordered by the
                                      key's create_revision (seq only makes the key unique)

The semantics are SqliteStore's (read its docstrings): compare-and-swap by txn on the object key's
mod_revision (expect 0: absent or a tombstone); updates without `expect` are read-modify-write
txns retried on contention; a tombstone written again is a new object (empty status, its events
dropped in the same txn); `changes(since)` reads the current keys (min_mod_revision), so a
compacted etcd history never loses a change; `watch` waits on etcd's watch of the object prefix.

With `cache=True`, `get` and `objects` (and the first read of a read-modify-write) are served from
a PrefixMirror of the object keys (softudc/etcd/mirror.py), held as marshal blobs so a read costs
one marshal.loads per object and returns fresh dicts (a caller may change them). A read waits for
the mirror to reach the latest object revision this store has seen (its own writes, what it read
from etcd) for up to CACHE_WAIT_S, else reads etcd: reads never go back in time, and a process
reads its own writes. `get` of an object the cache does not hold asks etcd. A reader that must
see everything written before some moment (a follower's `settle()`) calls `revision()` first:
it asks etcd, and later reads are at least that current. Compare-and-swap checks and
`changes`/`watch` always ask etcd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import marshal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

from softudc.etcd.client import (
    KV,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    cmp_create,
    cmp_mod,
    op_delete,
    op_put,
    op_range,
)
from softudc.etcd.mirror import PrefixMirror
from softudc.manager import store as store_module
from softudc.manager.store import Conflict, NotLeader, Obj

DEFAULT_PREFIX = "/softudc"
TXN_CHUNK = 100  # keys deleted per txn (etcd's --max-txn-ops defaults to 128)
WRITE_RETRY_S = 15.0  # how long a write is retried while etcd cannot say (elections take ~1 s)
RETRY_PAUSE_S = 0.1
LOAD_BATCH = 60  # objects per txn in load(): compares and puts stay under etcd's --max-txn-ops 128
CACHE_WAIT_S = 1.0  # how long a cached read waits for the mirror before it reads etcd itself


def _seg(text: str) -> str:
    return quote(text, safe="")


Cached = tuple[KV, bytes]  # the object's key-value and marshal((kind, name, spec, status, deleted))


class EtcdStore:
    """Store over an EtcdClient; `close()` closes the client only if `owns_client`."""

    def __init__(self, client: EtcdClient, prefix: str = DEFAULT_PREFIX, owns_client: bool = False,
                 cache: bool = False) -> None:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"etcd store prefix {prefix!r} must start with / and not end with one, like /softudc")
        self.client = client
        self.prefix = prefix
        self._owns = owns_client
        self._obj = f"{prefix}/obj/".encode()
        self._ev = f"{prefix}/ev/".encode()
        self._rev = f"{prefix}/revision".encode()
        self._seen = 0  # the latest object revision this store has written or read from etcd
        self._seen_lock = threading.Lock()
        self._mirror: PrefixMirror[Cached] | None = (
            PrefixMirror(client, self._obj, self._cached, name="softudc-store-cache") if cache else None)
        self._fence = threading.local()  # this thread's (leader key, its create revision), if fenced

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
        if self._owns:
            self.client.close()

    # -- the read cache -------------------------------------------------------------------------

    def _saw(self, revision: int) -> None:
        with self._seen_lock:
            self._seen = max(self._seen, revision)

    def _cached(self, kv: KV) -> Cached:
        o = self._decode(kv)
        # The JSON is not kept: only its marshal form is read back (half the memory).
        return dataclasses.replace(kv, value=b""), marshal.dumps((o.kind, o.name, o.spec, o.status, o.deleted))

    @staticmethod
    def _uncached(entry: Cached) -> Obj:
        kind, name, spec, status, deleted = marshal.loads(entry[1])
        return Obj(kind, name, entry[0].mod_revision, spec, status, deleted)

    def _cache(self, wait: float = CACHE_WAIT_S) -> PrefixMirror[Cached] | None:
        """The mirror if it has every write this store has seen (waiting up to `wait`), else None."""
        with self._seen_lock:
            seen = self._seen
        if self._mirror is not None and self._mirror.caught_up(seen, wait):
            return self._mirror
        return None

    # -- keys and values ------------------------------------------------------------------------

    def _key(self, kind: str, name: str) -> bytes:
        return self._obj + f"{_seg(kind)}/{_seg(name)}".encode()

    def _events_prefix(self, kind: str | None = None, name: str | None = None) -> bytes:
        if kind is None:
            return self._ev
        return self._ev + (f"{_seg(kind)}/" + (f"{_seg(name)}/" if name is not None else "")).encode()

    def _decode(self, kv: KV) -> Obj:
        kind, name = kv.key[len(self._obj):].decode().split("/")
        try:
            doc = json.loads(kv.value)
            return Obj(unquote(kind), unquote(name), kv.mod_revision, doc["spec"], doc["status"], bool(doc["deleted"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"etcd key {kv.key.decode(errors='replace')} is not a SoftUDC object ({e}): was it "
                             "written by something else? Restore it from a backup or delete it") from e

    @staticmethod
    def _encode(spec: dict[str, Any], status: dict[str, Any], deleted: bool = False) -> bytes:
        return json.dumps({"spec": spec, "status": status, "deleted": deleted}, sort_keys=True).encode()

    def _read(self, kind: str, name: str, cached: bool = False) -> tuple[KV | None, Obj | None]:
        """The object from etcd; `cached`: a live object from the cache if it has one, however
        current the cache is (a stale one only costs a failed compare-and-swap and a second read),
        anything else from etcd."""
        mirror = self._mirror if cached and self._mirror is not None and self._mirror.caught_up(0, 0) else None
        entry = mirror.get(self._key(kind, name)) if mirror is not None else None
        if entry is not None:
            obj = self._uncached(entry)
            if not obj.deleted:
                return entry[0], obj
        kv = self.client.get(self._key(kind, name))
        if kv is None:
            return None, None
        self._saw(kv.mod_revision)
        return kv, self._decode(kv)

    @staticmethod
    def _current(obj: Obj | None) -> int:
        return 0 if obj is None or obj.deleted else obj.revision

    def _check(self, kind: str, name: str, obj: Obj | None, expect: int | None) -> None:
        if expect is not None and self._current(obj) != expect:
            raise Conflict(f"{kind}/{name} is at revision {self._current(obj)}, not {expect}; read it again")

    def _write(self, kind: str, name: str, kv: KV | None, value: bytes, extra: list[dict[str, Any]]) -> int | None:
        """Put the object (and the revision key) if it is still at the revision read; None if not.

        During an election or when a member dies mid-request, etcd may not say whether the txn
        was applied: the key tells. Still at the revision read: not applied, try again; holding
        our value at a newer revision: applied; anything else: someone else wrote (None)."""
        key = self._key(kind, name)
        base = kv.mod_revision if kv else 0
        fence: tuple[bytes, int] | None = getattr(self._fence, "held", None)
        guard = [cmp_create(fence[0], "EQUAL", fence[1])] if fence else []
        deadline = time.monotonic() + WRITE_RETRY_S
        while True:
            try:
                ok, rev, _ = self.client.txn([cmp_mod(key, "EQUAL", base), *guard],
                                             [op_put(key, value), op_put(self._rev, b""), *extra])
                if ok:
                    self._saw(rev)
                elif fence:
                    self._check_fence(fence)
                return rev if ok else None
            except EtcdError as e:
                if not e.retryable or time.monotonic() > deadline:
                    raise
            time.sleep(RETRY_PAUSE_S)
            now = self.client.get(key)  # a read: itself goes round the endpoints for `timeout`
            if now is not None and now.mod_revision != base:
                self._saw(now.mod_revision)
                return now.mod_revision if now.value == value else None

    @contextlib.contextmanager
    def fenced(self, key: bytes, create_revision: int) -> Iterator[None]:
        """Object writes of this thread, while inside, happen only if `key` (a leader key) still has
        `create_revision`: a leader that lost its lease mid-pass writes nothing more (NotLeader),
        whatever its clock says. Requests, in other threads, are not fenced."""
        self._fence.held = (key, create_revision)
        try:
            yield
        finally:
            self._fence.held = None

    def _check_fence(self, fence: tuple[bytes, int]) -> None:
        """After a failed txn of a fenced write: NotLeader if the leader key moved on."""
        now = self.client.get(fence[0])
        if now is None or now.create_revision != fence[1]:
            raise NotLeader(f"{fence[0].decode()} is no longer this manager's (created at {fence[1]}, now "
                            f"{now.create_revision if now else 'gone'}): another manager leads; nothing written")

    # -- objects --------------------------------------------------------------------------------

    def put(self, kind: str, name: str, spec: dict[str, Any], expect: int | None = None) -> int:
        """Create or update; a tombstone written again is a new object: empty status, no events."""
        cached = expect is None
        while True:
            kv, obj = self._read(kind, name, cached)
            cached = False
            self._check(kind, name, obj, expect)
            fresh = obj is None or obj.deleted
            status = {} if obj is None or obj.deleted else obj.status
            drop = [op_delete(self._events_prefix(kind, name), prefix=True)] if fresh else []
            rev = self._write(kind, name, kv, self._encode(spec, status), drop)
            if rev is not None:
                return rev

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> int:
        cached = True
        while True:
            kv, obj = self._read(kind, name, cached)
            cached = False
            if obj is None or obj.deleted:
                raise KeyError(f"{kind}/{name} does not exist")
            rev = self._write(kind, name, kv, self._encode(obj.spec, status), [])
            if rev is not None:
                return rev

    def delete(self, kind: str, name: str, expect: int | None = None) -> int:
        while True:
            kv, obj = self._read(kind, name)
            self._check(kind, name, obj, expect)
            if obj is None or obj.deleted:
                raise KeyError(f"{kind}/{name} does not exist")
            rev = self._write(kind, name, kv, self._encode(obj.spec, obj.status, deleted=True), [])
            if rev is not None:
                return rev

    def load(self, objects: list[tuple[str, str, dict[str, Any], dict[str, Any]]]) -> int:
        """Write objects that do not exist yet (a restore into an empty store), LOAD_BATCH per txn
        (each batch shares one revision); a batch with a tombstone in it goes one object at a
        time, as put does. KeyError if one exists (the objects before it stay). Returns the
        revision of the last write."""
        rev = 0
        for i in range(0, len(objects), LOAD_BATCH):
            batch = objects[i:i + LOAD_BATCH]
            keys = [self._key(kind, name) for kind, name, _, _ in batch]
            ok, rev, _ = self.client.txn([cmp_create(key, "EQUAL", 0) for key in keys],
                                         [*(op_put(key, self._encode(spec, status))
                                            for key, (_, _, spec, status) in zip(keys, batch, strict=True)),
                                          op_put(self._rev, b"")])
            if not ok:
                rev = self._load_one_by_one(batch)
            self._saw(rev)
        return rev

    def _load_one_by_one(self, batch: list[tuple[str, str, dict[str, Any], dict[str, Any]]]) -> int:
        rev = 0
        for kind, name, spec, status in batch:
            try:
                self.put(kind, name, spec, expect=0)
            except Conflict:
                raise KeyError(f"{kind}/{name} exists already: load() is for an empty store") from None
            rev = self.set_status(kind, name, status)
        return rev

    def get(self, kind: str, name: str) -> Obj | None:
        """The live object or None. Cached: what the cache holds; an object it does not hold (yet:
        made at another manager a moment ago, a token say) is looked up in etcd."""
        mirror = self._cache()
        entry = mirror.get(self._key(kind, name)) if mirror is not None else None
        obj = self._uncached(entry) if entry is not None else None
        if obj is None or obj.deleted:
            obj = self._read(kind, name)[1]
        return obj if obj is not None and not obj.deleted else None

    def objects(self, kind: str) -> list[Obj]:
        under = self._obj + f"{_seg(kind)}/".encode()
        mirror = self._cache()
        if mirror is not None:
            objs = map(self._uncached, mirror.values(under))
        else:
            kvs = self.client.range(under, prefix=True)[1]
            self._saw(max((kv.mod_revision for kv in kvs), default=0))
            objs = map(self._decode, kvs)
        return sorted((o for o in objs if not o.deleted), key=lambda o: o.name)

    def kinds(self) -> list[str]:
        """Every kind with a live object, sorted (backups walk them)."""
        kvs = self.client.range(self._obj, prefix=True)[1]
        return sorted({o.kind for o in map(self._decode, kvs) if not o.deleted})

    def dump(self) -> tuple[int, list[Obj], list[dict[str, Any]]]:
        """The revision, every live object (by kind and name) and every event (oldest first), all
        read at one etcd revision."""
        header, kvs, _ = self.client.range(self._obj, prefix=True)
        objs = sorted((o for o in map(self._decode, kvs) if not o.deleted), key=lambda o: (o.kind, o.name))
        events = self.client.range(self._ev, prefix=True, sort_target="CREATE", sort_order="ASCEND",
                                   revision=header)[1]
        rev = self.client.range(self._rev, revision=header)[1]
        return (rev[0].mod_revision if rev else 0), objs, [self._event(kv) for kv in events]

    def changes(self, since: int) -> list[Obj]:
        """Objects written (or deleted) after revision `since`, oldest first: a watch by polling.
        Cached: from the cache, as current as everything this store has seen (call `revision()`
        first to see every manager's writes up to now)."""
        mirror = self._cache()
        if mirror is not None:
            return self._newer(mirror, since)
        return self._changes(since)[1]

    def _newer(self, mirror: PrefixMirror[Cached], since: int) -> list[Obj]:
        entries = sorted((e for e in mirror.values() if e[0].mod_revision > since), key=lambda e: e[0].mod_revision)
        if entries:
            self._saw(entries[-1][0].mod_revision)
        return [self._uncached(e) for e in entries]

    def _changes(self, since: int) -> tuple[int, list[Obj]]:
        header, kvs, _ = self.client.range(self._obj, prefix=True, min_mod_revision=since + 1,
                                           sort_target="MOD", sort_order="ASCEND")
        if kvs:
            self._saw(kvs[-1].mod_revision)
        return header, [self._decode(kv) for kv in kvs]

    def watch(self, since: int, timeout: float) -> list[Obj]:
        """What `changes(since)` returns, as soon as there is something: waits up to `timeout`
        seconds for a write of any manager (etcd's watch), then returns [] if there was none.
        Cached, the cache's own watch feeds it: no request to etcd while nothing changes."""
        deadline = time.monotonic() + max(timeout, 0.0)
        mirror = self._cache()
        if mirror is not None:
            got = self._watch_cached(mirror, since, deadline)
            if got is not None:
                return got
            timeout = deadline - time.monotonic()  # the cache went down: etcd for the rest
        header, changed = self._changes(since)
        if changed or timeout <= 0:
            return changed
        # Nothing after `since` up to `header`: only what comes after it can wake us. A compacted
        # history is no loss: changes() reads the current keys, not history.
        with contextlib.suppress(EtcdCompacted):
            self.client.watch(self._obj, prefix=True, start_revision=max(since, header) + 1, timeout=timeout)
        return self.changes(since)

    def _watch_cached(self, mirror: PrefixMirror[Cached], since: int, deadline: float) -> list[Obj] | None:
        """watch() from the cache (changes up to its revision, oldest first); None if it goes down."""
        while True:
            at = mirror.revision
            changed = self._newer(mirror, since)
            if changed:
                return changed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if not mirror.wait_beyond(at, remaining) and not mirror.caught_up(0, 0):
                return None

    def revision(self) -> int:
        kv = self.client.get(self._rev)
        rev = kv.mod_revision if kv is not None else 0
        self._saw(rev)
        return rev

    def compact(self, before: int) -> int:
        """Drop tombstones written at or before revision `before`, with their events. Returns how
        many were dropped (a tombstone written again meanwhile is kept: it is an object again)."""
        dropped = 0
        for kv in self.client.range(self._obj, prefix=True)[1]:
            obj = self._decode(kv)
            if not obj.deleted or obj.revision > before:
                continue
            ok, rev, _ = self.client.txn([cmp_mod(kv.key, "EQUAL", kv.mod_revision)],
                                         [op_delete(kv.key), op_delete(self._events_prefix(obj.kind, obj.name),
                                                                       prefix=True)])
            if ok:
                self._saw(rev)  # the cache shows the tombstone gone from now on (a DELETE at `rev`)
                dropped += 1
        return dropped

    # -- events ---------------------------------------------------------------------------------

    def event(self, kind: str, name: str, type_: str, message: str) -> None:
        self.put_event(kind, name, type_, message, time.time())

    def put_event(self, kind: str, name: str, type_: str, message: str, at: float) -> None:
        """Record an event at time `at` (restores keep the original times); keeps MAX_EVENTS per object."""
        prefix = self._events_prefix(kind, name)
        count = op_range(prefix, prefix=True, count_only=True)
        responses = self._create([self._event_kv(kind, name, type_, message, at)], [count])
        over = responses[-1]["response_range"]["count"] - store_module.MAX_EVENTS
        if over > 0:
            self._drop_oldest(prefix, over)

    def load_events(self, events: list[dict[str, Any]]) -> None:
        """Add events (dicts as `events` returns them, oldest first), many per txn, as a restore
        does. An object's events are ordered by create_revision, so a txn holds at most one of
        each object's: a batch ends where its object would come twice (order kept, ties only
        between different objects)."""
        batch: list[dict[str, Any]] = []
        names: set[tuple[str, str]] = set()
        for e in events:
            if (e["kind"], e["name"]) in names or len(batch) >= LOAD_BATCH:
                self._put_events(batch)
                batch, names = [], set()
            batch.append(e)
            names.add((e["kind"], e["name"]))
        if batch:
            self._put_events(batch)

    def _put_events(self, batch: list[dict[str, Any]]) -> None:
        base = time.time_ns()
        self._create([self._event_kv(e["kind"], e["name"], e["type"], e["message"], e["time"], base, i)
                      for i, e in enumerate(batch)], [])

    def _event_kv(self, kind: str, name: str, type_: str, message: str, at: float, base: int = 0,
                  index: int = 0) -> tuple[bytes, bytes]:
        """An event's key and value; its seq (the key's last part) orders the events of one txn."""
        seq = f"{base or time.time_ns():020d}-{index:06d}-{uuid.uuid4().hex[:8]}"
        return self._events_prefix(kind, name) + seq.encode(), json.dumps(
            {"time": at, "type": type_, "message": message}).encode()

    def _create(self, kvs: list[tuple[bytes, bytes]], reads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Put new keys (and run `reads`) in one txn, retried while etcd cannot say whether it was
        applied: the keys are new, so a retry of a txn that was applied fails its compare,
        harmlessly (`reads` then run in the failure branch). Returns the responses."""
        deadline = time.monotonic() + WRITE_RETRY_S
        while True:
            try:
                return self.client.txn([cmp_create(k, "EQUAL", 0) for k, _ in kvs],
                                       [*(op_put(k, v) for k, v in kvs), *reads], reads)[2]
            except EtcdError as e:
                if not e.retryable or time.monotonic() > deadline:
                    raise
            time.sleep(RETRY_PAUSE_S)

    def _drop_oldest(self, prefix: bytes, n: int) -> None:
        kvs = self.client.range(prefix, prefix=True, keys_only=True, sort_target="CREATE", sort_order="ASCEND",
                                limit=n)[1]
        for i in range(0, len(kvs), TXN_CHUNK):
            self.client.txn([], [op_delete(kv.key) for kv in kvs[i:i + TXN_CHUNK]])

    def events(self, kind: str | None = None, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest `limit` events, oldest first; of one kind and object when given."""
        if limit <= 0:
            return []
        by_name_only = kind is None and name is not None
        # Events restored together share a create_revision (load_events): their keys' seq orders
        # them, and LOAD_BATCH more are read so that such a group is never cut at the limit.
        kvs = self.client.range(self._events_prefix(kind, name), prefix=True, sort_target="CREATE",
                                sort_order="DESCEND", limit=0 if by_name_only else limit + LOAD_BATCH)[1]
        kvs.sort(key=lambda kv: (kv.create_revision, kv.key.rsplit(b"/", 1)[-1]))
        rows = [self._event(kv) for kv in kvs]
        if by_name_only:
            rows = [r for r in rows if r["name"] == name]
        return rows[-limit:]

    def _event(self, kv: KV) -> dict[str, Any]:
        try:
            kind, name, _ = kv.key[len(self._ev):].decode().split("/")
            doc = json.loads(kv.value)
            return {"time": float(doc["time"]), "kind": unquote(kind), "name": unquote(name),
                    "type": str(doc["type"]), "message": str(doc["message"])}
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"etcd key {kv.key.decode(errors='replace')} is not a SoftUDC event ({e}): was it "
                             "written by something else? Delete it") from e

