"""pytest fixtures of a real etcd (`/usr/bin/etcd`): `etcd_cluster`, one member on loopback for the
whole session, and `etcd_prefix`, a key prefix of its own for each test (tests share the member
but never each other's keys). The member is stopped by PID at the session's end, even on failure.
`store_backend` runs a store test on SQLite and on etcd."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from softudc.etcd.cluster import EtcdCluster
from softudc.manager.etcdstore import EtcdStore
from softudc.manager.store import SqliteStore, Store


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster.start(tmp_path_factory.mktemp("etcd"), members=1)
    try:
        yield cluster
    finally:
        cluster.stop(remove=True)


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix nobody else uses: `/t-<random>`."""
    return f"/t-{uuid.uuid4().hex[:12]}"


@dataclass
class StoreBackend:
    """One backend of the store suite: `open()` a store (again: the same data), `stored_events()`
    counts the events kept (not only those shown), `name` is "sqlite", "etcd" or "etcd-cached"."""

    name: str
    open: Callable[[], Store]
    stored_events: Callable[[], int]


@pytest.fixture(params=["sqlite", "etcd", "etcd-cached"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    """Each store test runs on SQLite (a file of its own) and on etcd (a prefix of its own in the
    session's member), without and with the read cache; every store opened is closed at the end."""
    opened: list[Store] = []

    def remember(store: Store) -> Store:
        opened.append(store)
        return store

    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def sqlite_events() -> int:
            with sqlite3.connect(path) as db:
                return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

        backend = StoreBackend("sqlite", lambda: remember(SqliteStore(path)), sqlite_events)
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
        prefix = f"/t-{uuid.uuid4().hex[:12]}"

        def etcd_events() -> int:
            client = cluster.client()
            try:
                return client.range(f"{prefix}/ev/".encode(), prefix=True, count_only=True)[2]
            finally:
                client.close()

        cache = request.param == "etcd-cached"
        backend = StoreBackend(request.param, lambda: remember(
            EtcdStore(cluster.client(), prefix, owns_client=True, cache=cache)), etcd_events)
    try:
        yield backend
    finally:
        for store in opened:
            store.close()


@pytest.fixture(autouse=True)
def _store_from_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SOFTUDC_TEST_STORE=etcd (or etcd-cached) runs the tests with every Manager's default store
    an EtcdStore in the session's etcd instead of SQLite (a prefix per state directory):
    `SOFTUDC_TEST_STORE=etcd-cached pytest tests/unit/manager` is the manager on etcd."""
    backend = os.environ.get("SOFTUDC_TEST_STORE", "sqlite")
    if backend == "sqlite":
        yield
        return
    import softudc.manager.service as service

    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    prefixes: dict[str, str] = {}
    opened: list[EtcdStore] = []

    class EtcdInstead:
        def __new__(cls, path: object) -> EtcdStore:  # type: ignore[misc]
            prefix = prefixes.setdefault(str(path), f"/t-{uuid.uuid4().hex[:12]}")
            opened.append(EtcdStore(cluster.client(), prefix, owns_client=True, cache=backend == "etcd-cached"))
            return opened[-1]

    monkeypatch.setattr(service, "SqliteStore", EtcdInstead)
    try:
        yield
    finally:
        for store in opened:
            store.close()
