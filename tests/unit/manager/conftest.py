"""What several manager tests share: a manager over the in-memory FakeStore with one joined host."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from softudc.manager.service import Manager, init
from tests.unit.manager.test_loop import FakeStore


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Manager, FakeStore]]:
    """A manager (id m1) over a FakeStore holding one joined host, h1."""
    init(tmp_path, ["127.0.0.1"])
    store = FakeStore()
    m = Manager(tmp_path, store=store)
    m.manager_id = "m1"
    store.put("host", "h1", {"joined": time.time(), "certificate": "f1"})
    yield m, store
    m.close()
    m.close_hosts()


def host_writes(store: FakeStore, since: int) -> list[str]:
    """The operations on hosts the store saw since write number `since`."""
    return [op for op, kind, _, _ in store.writes[since:] if kind == "host"]
