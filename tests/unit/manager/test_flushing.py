"""FlushedBook: the thread starts with the first entry, a failing write is logged and tried again
on the next tick (the loop goes on), and close() writes what is left."""

from __future__ import annotations

import threading
import time

from softudc.manager.flushing import FlushedBook


class Book(FlushedBook):
    def __init__(self) -> None:
        super().__init__("m1", every_s=0.01)
        self.lock = threading.Lock()
        self.writes = 0
        self.failures = 2

    def flush(self) -> bool:
        self.writes += 1
        if self.failures:
            self.failures -= 1
            raise OSError("the store said no")
        return True


def test_the_thread_survives_failing_writes_and_close_writes_once_more() -> None:
    book = Book()
    assert book._thread is None  # nothing written before the first entry
    with book.lock:
        book._wake("test")
        first = book._thread
        book._wake("test")  # already running: the same thread
    assert first is not None and book._thread is first and first.name == "softudc-test-m1"
    deadline = time.monotonic() + 5
    while book.writes < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert book.writes >= 4 and book.failures == 0  # two failures, then it went on
    book.close()
    assert not first.is_alive()
    after = book.writes
    book._wake("test")  # closed: no new thread
    assert book._thread is first and book.writes == after
