"""pytest fixtures of a real etcd (`/usr/bin/etcd`): `etcd_cluster`, one member on loopback for the
whole session, and `etcd_prefix`, a key prefix of its own for each test (tests share the member
but never each other's keys). The member is stopped by PID at the session's end, even on failure."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from softudc.etcd.cluster import EtcdCluster


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
