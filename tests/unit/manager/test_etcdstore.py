"""What only the etcd backend has to get right: the revision counts object writes only, watches
see other managers' writes at once and survive a compacted history, the layout under the prefix."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from softudc.etcd.client import EtcdClient
from softudc.etcd.cluster import EtcdCluster
from softudc.manager.etcdstore import EtcdStore
from softudc.manager.store import NotLeader


@pytest.fixture
def client(etcd_cluster: EtcdCluster) -> Iterator[EtcdClient]:
    c = etcd_cluster.client()
    yield c
    c.close()


def test_the_revision_is_the_latest_object_write_only(client: EtcdClient, etcd_prefix: str) -> None:
    s = EtcdStore(client, etcd_prefix)
    assert s.revision() == 0
    rev = s.put("farm", "shop", {})
    s.event("farm", "shop", "Applied", "by test")
    client.put(f"{etcd_prefix}/leader".encode(), b"{}")  # the leader key, not an object
    assert s.revision() == rev and s.changes(rev) == [] and s.watch(rev, timeout=0.1) == []
    assert client.get(f"{etcd_prefix}/obj/farm/shop".encode()).mod_revision == rev  # type: ignore[union-attr]


def test_a_watch_wakes_on_another_manager_s_write(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    a = EtcdStore(etcd_cluster.client(), etcd_prefix, owns_client=True)
    b = EtcdStore(etcd_cluster.client(), etcd_prefix, owns_client=True)
    try:
        rev = a.put("farm", "shop", {})
        timer = threading.Timer(0.2, lambda: b.set_status("farm", "shop", {"by": "b"}))
        start = time.monotonic()
        timer.start()
        got = a.watch(rev, timeout=30)
        timer.join()
        assert [o.status for o in got] == [{"by": "b"}] and time.monotonic() - start < 10
    finally:
        a.close()
        b.close()


def test_a_watch_from_before_the_compacted_history_still_gets_the_changes(client: EtcdClient,
                                                                          etcd_prefix: str) -> None:
    s = EtcdStore(client, etcd_prefix)
    first = s.put("farm", "a", {})
    for i in range(5):
        s.set_status("farm", "a", {"i": i})
    client.compact(client.range(b"/")[0])
    assert [o.status for o in s.watch(first, timeout=5)] == [{"i": 4}]
    rev = s.revision()
    timer = threading.Timer(0.2, lambda: s.put("farm", "b", {}))
    timer.start()
    got = s.watch(rev, timeout=30)
    timer.join()
    assert [o.name for o in got] == ["b"]


def test_a_prefix_must_be_a_path(client: EtcdClient) -> None:
    for bad in ("softudc", "/softudc/", ""):
        with pytest.raises(ValueError, match="must start with /"):
            EtcdStore(client, bad)


def test_garbage_under_the_prefix_is_named(client: EtcdClient, etcd_prefix: str) -> None:
    s = EtcdStore(client, etcd_prefix)
    client.put(f"{etcd_prefix}/obj/farm/bad".encode(), b"not json")
    with pytest.raises(ValueError, match=f"{etcd_prefix}/obj/farm/bad is not a SoftUDC object"):
        s.objects("farm")
    client.put(f"{etcd_prefix}/ev/farm/x/1".encode(), b"{}")
    with pytest.raises(ValueError, match=f"{etcd_prefix}/ev/farm/x/1 is not a SoftUDC event"):
        s.events("farm", "x")



def test_writes_go_on_through_the_leader_s_death(tmp_path: Path) -> None:
    """The leader SIGKILLed while a manager writes: every write lands once (none fails, none is
    lost), reads go on, and the revisions keep growing."""
    cluster = EtcdCluster.start(tmp_path / "etcd", members=3)
    s = EtcdStore(cluster.client(timeout=3), "/softudc", owns_client=True)
    try:
        leader = next(i for i, row in enumerate(s.client.status()) if row["leader"] == row["member_id"])
        s.client._remember(leader)  # the writes go to the member about to die
        s.put("farm", "f", {})
        revs = []
        for i in range(40):
            if i == 10:
                cluster.kill(leader)
            revs.append(s.set_status("farm", "f", {"i": i}))
            s.event("farm", "f", "Step", str(i))
        assert revs == sorted(set(revs))
        obj = s.get("farm", "f")
        assert obj is not None and obj.status == {"i": 39} and obj.revision == revs[-1] == s.revision()
        assert [e["message"] for e in s.events("farm", "f", limit=100)] == [str(i) for i in range(40)]  # once each
    finally:
        s.close()
        cluster.stop()


def test_a_cached_store_never_reads_older_than_what_it_has_seen(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    writer = EtcdStore(etcd_cluster.client(), etcd_prefix, owns_client=True, cache=True)
    reader = EtcdStore(etcd_cluster.client(), etcd_prefix, owns_client=True, cache=True)
    try:
        since = writer.put("host", "h", {})
        for i in range(30):
            writer.set_status("host", "h", {"i": i})
            assert writer.get("host", "h").status == {"i": i}  # type: ignore[union-attr]  # its own write
            changed = reader.watch(since, timeout=10)  # what the controllers' loop does
            since = changed[-1].revision
            assert reader.get("host", "h").status == {"i": i}  # type: ignore[union-attr]  # not older
            assert [o.status for o in reader.objects("host")] == [{"i": i}]
        obj = reader.get("host", "h")
        assert obj is not None
        obj.status["mutated"] = True  # a caller's change stays its own
        assert reader.get("host", "h").status == {"i": 29}  # type: ignore[union-attr]
    finally:
        writer.close()
        reader.close()


def test_revision_makes_a_cached_reader_as_current_as_etcd(etcd_cluster: EtcdCluster, etcd_prefix: str) -> None:
    writer = EtcdStore(etcd_cluster.client(), etcd_prefix, owns_client=True)
    reader = EtcdStore(etcd_cluster.client(), etcd_prefix, owns_client=True, cache=True)
    try:
        for i in range(20):
            writer.put("farm", f"f{i}", {})
            reader.revision()  # what a follower's settle() does before it reads
            assert len(reader.objects("farm")) == i + 1
    finally:
        writer.close()
        reader.close()


@pytest.mark.parametrize("cache", [False, True])
def test_a_fenced_write_of_a_deposed_leader_is_refused_and_writes_nothing(client: EtcdClient, etcd_prefix: str,
                                                                          cache: bool) -> None:
    s = EtcdStore(client, etcd_prefix, cache=cache)
    try:
        leader = f"{etcd_prefix}/leader".encode()
        mine = client.put(leader, b"m1")  # this manager's leader key, created at `mine`
        s.put("farm", "shop", {})
        with s.fenced(leader, mine):
            s.set_status("farm", "shop", {"planned": 1})  # still the leader: written
        client.delete(leader)
        client.put(leader, b"m2")  # another manager took over (a new key, a new create revision)
        errors: list[Exception] = []
        with s.fenced(leader, mine):
            with pytest.raises(NotLeader, match="another manager leads"):
                s.set_status("farm", "shop", {"planned": 2})
            # Requests run in other threads and are not fenced: their writes go on.
            t = threading.Thread(target=lambda: s.put("farm", "web", {}))
            t.start()
            t.join()
            try:
                s.put("farm", "db", {})
            except NotLeader as e:
                errors.append(e)
        assert len(errors) == 1  # nothing of the deposed leader's pass was written...
        got = s.get("farm", "shop")
        assert got is not None and got.status == {"planned": 1}
        assert s.get("farm", "db") is None and s.get("farm", "web") is not None  # ...a request's was
        s.set_status("farm", "shop", {"planned": 3})  # outside the fence: as any request
    finally:
        s.close()
