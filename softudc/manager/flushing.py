"""A book kept in memory and written to the store by its own small thread: the heartbeats
(heartbeats.py) and the hosts' load (load.py) change every few seconds per host, far too often
to write each change. The thread starts with the first entry (`_wake`, under the book's lock),
writes at most every `every_s` when something changed, and `close()` writes what is left."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("softudc.manager")


class FlushedBook:
    """The thread and its stop of a book; subclasses write in `flush()` (and may do more per tick
    in `_tick()`)."""

    what = "the book"  # for the log: "the heartbeats", "the load view"

    def __init__(self, manager_id: str, every_s: float) -> None:
        self.manager_id, self.every_s = manager_id, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def flush(self) -> bool:
        raise NotImplementedError

    def _tick(self) -> None:
        self.flush()

    def _wake(self, name: str) -> None:
        """Start the thread unless it runs or the book is closed (call it under the book's lock)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name=f"softudc-{name}-{self.manager_id}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and write what is left (a clean stop loses nothing)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._tick()
            except Exception:  # a store that fails now and then: the next flush writes it all
                log.exception("writing %s of %s failed; trying again in %.0f s", self.what, self.manager_id,
                              self.every_s)
