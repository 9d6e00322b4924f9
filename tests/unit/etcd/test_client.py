"""The etcd client against a real etcd (the session's member)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from softudc.etcd.client import EtcdClient, EtcdCompacted, EtcdError, cmp_mod, op_put, op_range
from softudc.etcd.cluster import EtcdCluster, free_port


@pytest.fixture
def client(etcd_cluster: EtcdCluster) -> Iterator[EtcdClient]:
    c = etcd_cluster.client()
    yield c
    c.close()


def test_put_range_delete(client: EtcdClient, etcd_prefix: str) -> None:
    p = etcd_prefix.encode()
    r1 = client.put(p + b"/a", b"1")
    r2 = client.put(p + b"/b", b"\x00\xff")
    assert r2 > r1
    rev, kvs, count = client.range(p + b"/", prefix=True)
    assert rev >= r2 and count == 2 and [(k.key, k.value) for k in kvs] == [(p + b"/a", b"1"), (p + b"/b", b"\x00\xff")]
    assert kvs[0].mod_revision == r1 and kvs[0].version == 1
    _, newer, _ = client.range(p + b"/", prefix=True, min_mod_revision=r2)
    assert [k.key for k in newer] == [p + b"/b"]
    _, desc, _ = client.range(p + b"/", prefix=True, sort_target="MOD", sort_order="DESCEND", limit=1)
    assert [k.key for k in desc] == [p + b"/b"]
    assert client.range(p + b"/", prefix=True, count_only=True)[1:] == ([], 2)
    _, deleted = client.delete(p + b"/", prefix=True)
    assert deleted == 2 and client.get(p + b"/a") is None


def test_txn_compare_and_swap(client: EtcdClient, etcd_prefix: str) -> None:
    key = etcd_prefix.encode() + b"/k"
    ok, rev, _ = client.txn([cmp_mod(key, "EQUAL", 0)], [op_put(key, b"v1")])
    assert ok
    ok, _, responses = client.txn([cmp_mod(key, "EQUAL", 0)], [op_put(key, b"v2")], [op_range(key)])
    assert not ok and responses[0]["response_range"]["kvs"][0].value == b"v1"
    ok, rev2, _ = client.txn([cmp_mod(key, "EQUAL", rev)], [op_put(key, b"v2")])
    assert ok and rev2 > rev


def test_an_etcd_error_names_the_endpoint_and_the_cause(client: EtcdClient, etcd_cluster: EtcdCluster) -> None:
    with pytest.raises(EtcdError, match=f"{etcd_cluster.endpoints[0]}.*future revision") as e:
        client.range(b"x", revision=10**12)
    assert e.value.code == 11


def test_watch_returns_events_or_nothing_by_the_deadline(client: EtcdClient, etcd_prefix: str) -> None:
    p = etcd_prefix.encode() + b"/"
    start = time.monotonic()
    assert client.watch(p, prefix=True, timeout=0.3) == []
    assert 0.25 < time.monotonic() - start < 3
    rev = client.put(p + b"a", b"1")
    client.delete(p + b"a")
    events = client.watch(p, prefix=True, start_revision=rev, timeout=5)
    assert [(e.key, e.deleted) for e in events] == [(p + b"a", False), (p + b"a", True)]
    timer = threading.Timer(0.2, lambda: client.put(p + b"b", b"2"))
    timer.start()
    try:
        assert [e.key for e in client.watch(p, prefix=True, timeout=10)] == [p + b"b"]
    finally:
        timer.join()


def test_watch_of_compacted_history_says_so(client: EtcdClient, etcd_prefix: str) -> None:
    key = etcd_prefix.encode() + b"/c"
    first = client.put(key, b"1")
    last = client.put(key, b"2")
    client.compact(last)
    with pytest.raises(EtcdCompacted) as e:
        client.watch(key, start_revision=first, timeout=5)
    assert e.value.compact_revision >= last


def test_leases(client: EtcdClient, etcd_prefix: str) -> None:
    lease = client.lease_grant(5)
    key = etcd_prefix.encode() + b"/leased"
    client.put(key, b"x", lease=lease)
    assert client.get(key).lease == lease  # type: ignore[union-attr]
    assert 0 < client.lease_keepalive(lease) <= 5
    client.lease_revoke(lease)
    assert client.get(key) is None and client.lease_keepalive(lease) == 0
    client.lease_revoke(lease)  # already gone: fine


def test_status_and_members(client: EtcdClient, etcd_cluster: EtcdCluster) -> None:
    [row] = client.status()
    assert row["ok"] and row["leader"] == row["member_id"] and row["version"].startswith("3.")
    [member] = client.members()
    assert member["client_urls"] == etcd_cluster.endpoints


def test_a_dead_endpoint_is_skipped_and_the_good_one_remembered(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    c = EtcdClient([dead, *etcd_cluster.endpoints], timeout=2)
    try:
        c.put(etcd_prefix.encode(), b"x")
        assert c.endpoints[c._good] == etcd_cluster.endpoints[0]
        rows = c.status()
        assert not rows[0]["ok"] and dead in rows[0]["error"] and rows[1]["ok"]
    finally:
        c.close()


def test_no_endpoint_answering_names_them_all() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    c = EtcdClient(dead, timeout=1)
    try:
        with pytest.raises(EtcdError, match="no etcd endpoint answered") as e:
            c.range(b"x")
        assert all(d in str(e.value) for d in dead) and "etcdctl" in str(e.value)
    finally:
        c.close()


def test_an_unknown_outcome_is_retryable_a_refusal_is_not(client: EtcdClient) -> None:
    assert EtcdError("x", 14).retryable and EtcdError("x", retryable=True).retryable
    with pytest.raises(EtcdError) as e:
        client.range(b"x", revision=10**12)
    assert not e.value.retryable
