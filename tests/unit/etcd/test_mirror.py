"""The prefix mirror: a local copy that follows etcd, knows how current it is, and stops at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from softudc.etcd.client import KV
from softudc.etcd.cluster import EtcdCluster
from softudc.etcd.mirror import PrefixMirror


def value(kv: KV) -> bytes:
    return kv.value


def test_the_copy_loads_follows_and_knows_its_revision(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    client = etcd_cluster.client()
    p = etcd_prefix.encode() + b"/"
    client.put(p + b"a", b"1")
    client.put(etcd_prefix.encode() + b"-other", b"not mine")
    mirror = PrefixMirror(client, p, value)
    try:
        assert mirror.caught_up(0, 10) and mirror.values() == [b"1"] and mirror.loads == 1
        rev = client.put(p + b"b", b"2")
        assert mirror.caught_up(rev, 10) and mirror.get(p + b"b") == b"2"
        rev = client.delete(p + b"a")[0]
        assert mirror.caught_up(rev, 10) and mirror.get(p + b"a") is None and mirror.values(p + b"b") == [b"2"]
        assert not mirror.caught_up(rev + 1000, 0.05)  # nothing there yet: the reader goes to etcd
    finally:
        start = time.monotonic()
        mirror.close()
        client.close()
    assert time.monotonic() - start < 2 and not any(t.name == "softudc-etcd-mirror" for t in threading.enumerate())


def test_a_mirror_without_etcd_sends_readers_to_etcd_and_recovers(tmp_path: Path) -> None:
    cluster = EtcdCluster.start(tmp_path / "etcd", members=1)
    client = cluster.client(timeout=1)
    mirror = PrefixMirror(client, b"/m/", value)
    try:
        rev = client.put(b"/m/a", b"1")
        assert mirror.caught_up(rev, 10)
        cluster.kill(0)
        deadline = time.monotonic() + 20
        while mirror.caught_up(rev, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not mirror.caught_up(rev, 0)  # the watch is down: not current any more
        start = time.monotonic()
        assert not mirror.caught_up(rev + 1, 5) and time.monotonic() - start < 1  # and readers do not wait
        cluster.restart(0)
        rev = client.put(b"/m/b", b"2")
        deadline = time.monotonic() + 20
        while not mirror.caught_up(rev, 1) and time.monotonic() < deadline:  # its next try (RETRY_S) recovers
            time.sleep(0.1)
        assert mirror.caught_up(rev, 0) and mirror.get(b"/m/b") == b"2"
    finally:
        mirror.close()
        client.close()
        cluster.stop()


def test_a_mirror_on_a_member_cut_from_its_leader_is_not_current(tmp_path: Path) -> None:
    """The watch asks for a leader (gRPC metadata hasleader): an isolated member cancels it,
    instead of keeping the copy quietly cut off from new writes."""
    cluster = EtcdCluster.start(tmp_path / "etcd", members=3)
    client = cluster.client(timeout=2)
    client.endpoints = client.endpoints[:1]  # this member only
    mirror = PrefixMirror(client, b"/m/", value)
    try:
        rev = client.put(b"/m/a", b"1")
        assert mirror.caught_up(rev, 10)
        cluster.kill(1)
        cluster.kill(2)
        deadline = time.monotonic() + 30
        while mirror.caught_up(rev, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not mirror.caught_up(rev, 0)
    finally:
        mirror.close()
        client.close()
        cluster.stop()
