"""A local copy of every key under an etcd prefix, kept current by a background watch: reads
served from memory instead of a range over the network (EtcdStore's read cache, issue 11).

The copy knows the revision it reflects (`revision`: every write up to it is applied). A reader
that must see a write at revision R (its own write, or one it has read from etcd directly) asks
`caught_up(R, wait)`: true once the copy reaches R, false if it did not within `wait` seconds or
the watch is down; the reader then reads etcd itself. So the copy never shows a reader something
older than what that reader has already seen.

Values are converted once, when they arrive (`convert(kv) -> T`), not at every read. The watch
runs in a named daemon thread; `close()` stops and joins it. A compacted history (the watch fell
behind etcd's retention) reloads the whole prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from softudc.etcd.client import KV, EtcdClient, EtcdCompacted, EtcdError, WatchStop

T = TypeVar("T")
IDLE_S = 5.0  # a watch stream without events is renewed this often (close() ends it at once)
RETRY_S = 0.5  # after a failed watch or load


class PrefixMirror(Generic[T]):
    def __init__(self, client: EtcdClient, prefix: bytes, convert: Callable[[KV], T],
                 name: str = "softudc-etcd-mirror") -> None:
        self.client = client
        self.prefix = prefix
        self._convert = convert
        self._items: dict[bytes, T] = {}
        self._revision = 0
        self._healthy = False
        self._failed = False  # the watch or load failed and has not recovered: readers do not wait
        self._changed = threading.Condition()
        self._stop = WatchStop()
        self._wake = threading.Event()  # ends the pause after a failure at once on close()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.loads = 0  # full loads done (1 at start, more after compactions): for tests and metrics
        self._thread.start()

    @property
    def revision(self) -> int:
        with self._changed:
            return self._revision

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(self.client.timeout + 1)

    def caught_up(self, revision: int, wait: float) -> bool:
        """Is (or becomes, within `wait` seconds) the copy at `revision` or later, watch running?
        While the watch is failing it answers at once (no wait for etcd that is away)."""
        with self._changed:
            self._changed.wait_for(lambda: self._failed or (self._healthy and self._revision >= revision), wait)
            return self._healthy and self._revision >= revision

    def wait_beyond(self, revision: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the copy to move past `revision`: true if it did (watch
        running), false at the timeout or as soon as the watch is down."""
        with self._changed:
            self._changed.wait_for(lambda: not self._healthy or self._revision > revision, timeout)
            return self._healthy and self._revision > revision

    def get(self, key: bytes) -> T | None:
        with self._changed:
            return self._items.get(key)

    def values(self, under: bytes = b"") -> list[T]:
        """The values of the keys starting with `under` (the whole prefix by default)."""
        with self._changed:
            return [v for k, v in self._items.items() if k.startswith(under)]

    # -- the watch thread -----------------------------------------------------------------------

    def _run(self) -> None:
        loaded = False
        while not self._stop.is_set():
            try:
                if not loaded:
                    self._load()
                    loaded = True
                self._follow()
            except EtcdCompacted:
                loaded = False
            except (EtcdError, ValueError):  # etcd away, or a value `convert` refuses: readers go to etcd
                self._set_healthy(False)
                self._wake.wait(RETRY_S)
        self._set_healthy(False)

    def _set_healthy(self, healthy: bool) -> None:
        with self._changed:
            self._healthy = healthy
            self._failed = not healthy
            self._changed.notify_all()

    def _load(self) -> None:
        header, kvs, _ = self.client.range(self.prefix, prefix=True)
        items = {kv.key: self._convert(kv) for kv in kvs}
        with self._changed:
            self._items, self._revision, self._healthy, self._failed = items, header, True, False
            self.loads += 1
            self._changed.notify_all()

    def _follow(self) -> None:
        """One watch stream from the revision after the copy's; returns when it goes idle."""
        for batch in self.client.watch_stream(self.prefix, prefix=True, start_revision=self.revision + 1,
                                              idle=IDLE_S, stop=self._stop):
            converted = [(kv, None if kv.deleted else self._convert(kv)) for kv in batch]
            with self._changed:
                for kv, value in converted:
                    if value is None:
                        self._items.pop(kv.key, None)
                    else:
                        self._items[kv.key] = value
                    self._revision = max(self._revision, kv.mod_revision)
                self._healthy, self._failed = True, False
                self._changed.notify_all()
        self._set_healthy(True)
