"""The store's contract, run on both backends (SqliteStore and EtcdStore, see tests/etcd_fixture.py)."""

from __future__ import annotations

import threading

import pytest

from softudc.manager.store import Conflict
from tests.etcd_fixture import StoreBackend


def test_revisions_compare_and_swap_and_watch(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    r1 = s.put("farm", "shop", {"vms": 2})
    r2 = s.put("farm", "blog", {"vms": 1})
    assert r2 > r1 and s.revision() == r2
    with pytest.raises(Conflict, match="not 0"):
        s.put("farm", "shop", {"vms": 3}, expect=0)  # create-only, but it exists
    r3 = s.put("farm", "shop", {"vms": 3}, expect=r1)
    with pytest.raises(Conflict):
        s.put("farm", "shop", {"vms": 4}, expect=r1)  # stale read
    assert [(o.name, o.revision) for o in s.changes(r2)] == [("shop", r3)]
    r4 = s.delete("farm", "blog")
    assert s.get("farm", "blog") is None
    assert [(o.name, o.deleted) for o in s.changes(r3)] == [("blog", True)]  # the watcher learns
    assert r4 > r3


def test_nothing_is_lost_across_a_restart(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.put("farm", "shop", {"vms": 2})
    s.set_status("farm", "shop", {"conditions": {"Placed": True}})
    s.event("farm", "shop", "Applied", "2 VMs planned")
    s.close()
    again = store_backend.open()
    obj = again.get("farm", "shop")
    assert obj and obj.spec == {"vms": 2} and obj.status["conditions"]["Placed"] is True
    assert [e["message"] for e in again.events("farm", "shop")] == ["2 VMs planned"]
    assert again.revision() == obj.revision


def test_concurrent_writers_get_distinct_revisions(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    revs: list[int] = []

    def write(i: int) -> None:
        for j in range(20):
            revs.append(s.put("vm", f"v{i}-{j}", {"i": i}))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(revs)) == 80 and s.revision() == max(revs)
    assert len(s.objects("vm")) == 80


def test_missing_objects_are_reported(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    with pytest.raises(KeyError):
        s.delete("farm", "nope")
    with pytest.raises(KeyError):
        s.set_status("farm", "nope", {})


def test_watch_returns_at_once_what_changed_after_since(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    r1 = s.put("farm", "shop", {"vms": 2})
    r2 = s.put("host", "h1", {})
    assert [(o.kind, o.revision) for o in s.watch(r1, timeout=60)] == [("host", r2)]  # no wait: it is there
    assert [o.name for o in s.watch(0, timeout=60)] == ["shop", "h1"]


def test_watch_times_out_empty_and_an_event_is_not_a_change(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    rev = s.put("farm", "shop", {})
    s.event("farm", "shop", "Applied", "by test")  # the log is not the objects: no revision, no wake
    assert s.watch(rev, timeout=0.05) == []
    assert s.watch(rev, timeout=-1) == []  # a deadline already past asks, and does not wait


def test_watch_wakes_on_a_write_from_another_thread(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    rev = s.put("farm", "shop", {})
    writer = threading.Timer(0.05, lambda: s.delete("farm", "shop"))
    writer.start()
    got = s.watch(rev, timeout=60)  # long before the timeout: the commit notifies
    writer.join()
    assert [(o.name, o.deleted) for o in got] == [("shop", True)]


def test_watch_sees_another_connection_s_write_by_reading_the_file(store_backend: StoreBackend) -> None:
    s, other = store_backend.open(), store_backend.open()
    rev = s.revision()
    other.put("farm", "shop", {})  # no notification crosses connections: the watch reads the revision
    assert [o.name for o in s.watch(rev, timeout=0.05)] == ["shop"]


def test_writers_of_one_object_all_land_without_expect(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.put("farm", "shop", {})
    others = [store_backend.open() for _ in range(3)]

    def write(store: object, i: int) -> None:
        for j in range(5):
            store.set_status("farm", "shop", {"by": i, "n": j})  # type: ignore[attr-defined]

    threads = [threading.Thread(target=write, args=(o, i)) for i, o in enumerate(others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rev = s.revision()  # other managers' writes: a cached store sees them once it has seen this
    obj = s.get("farm", "shop")
    assert obj is not None and obj.status["n"] == 4 and obj.revision == rev
    assert len(s.changes(0)) == 1


def test_names_are_opaque_text(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    for name in ("a/b", "a", "a%2Fb", "ü-ß", "a b"):
        s.put("farm", name, {"n": name})
        s.event("farm", name, "Applied", name)
    assert [o.name for o in s.objects("farm")] == sorted(["a/b", "a", "a%2Fb", "ü-ß", "a b"])
    assert s.get("farm", "a/b").spec == {"n": "a/b"}  # type: ignore[union-attr]
    assert [e["message"] for e in s.events("farm", "a")] == ["a"]
    assert [e["message"] for e in s.events(name="a/b")] == ["a/b"]
    assert s.objects("far") == [] and s.events("far") == []


def test_a_tombstone_is_absent_for_compare_and_swap(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    r1 = s.put("farm", "x", {})
    with pytest.raises(Conflict):
        s.delete("farm", "x", expect=r1 + 1000)
    s.delete("farm", "x", expect=r1)
    with pytest.raises(KeyError):
        s.delete("farm", "x")
    with pytest.raises(Conflict, match="at revision 0"):
        s.put("farm", "x", {}, expect=r1)
    assert s.put("farm", "x", {"again": True}, expect=0) == s.revision()


def test_kinds_lists_the_kinds_with_a_live_object(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    assert s.kinds() == []
    s.put("host", "h1", {})
    s.put("farm", "f", {})
    s.put("vm", "gone", {})
    s.delete("vm", "gone")
    assert s.kinds() == ["farm", "host"]


def test_an_event_put_at_a_time_keeps_it(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.put_event("farm", "f", "Applied", "restored", 1234.5)
    s.event("farm", "f", "Planned", "now")
    got = s.events("farm", "f")
    assert (got[0]["time"], got[0]["type"]) == (1234.5, "Applied") and got[1]["time"] > 1234.5


def test_dump_is_one_consistent_view(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.put("host", "h1", {})
    s.put("farm", "b", {})
    s.put("farm", "a", {})
    s.put("vm", "gone", {})
    s.delete("vm", "gone")
    s.event("farm", "a", "Applied", "1")
    rev, objs, events = s.dump()
    assert rev == s.revision() and [(o.kind, o.name) for o in objs] == [("farm", "a"), ("farm", "b"), ("host", "h1")]
    assert events == s.events(limit=100)
    s.put("farm", "c", {})  # the latest write is a live object from now on
    writer = store_backend.open()
    done = threading.Event()

    def write() -> None:
        i = 0
        while not done.is_set():
            writer.put("farm", f"w{i}", {})
            i += 1

    t = threading.Thread(target=write)
    t.start()
    try:
        for _ in range(5):
            rev, objs, _ = s.dump()
            assert rev == max(o.revision for o in objs)  # the revision and the objects agree
    finally:
        done.set()
        t.join()


def test_load_writes_new_objects_at_once(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.put("farm", "was", {})
    s.event("farm", "was", "Applied", "old")
    s.delete("farm", "was")  # a tombstone is no obstacle, and its events go
    objs = [("host", f"h{i}", {"i": i}, {"up": True}) for i in range(130)] + [("farm", "was", {"new": 1}, {})]
    rev = s.load(objs)
    assert rev == s.revision() and len(s.objects("host")) == 130 and s.events("farm", "was") == []
    assert s.get("host", "h129").status == {"up": True} and s.get("farm", "was").spec == {"new": 1}  # type: ignore[union-attr]
    assert {o.name for o in s.changes(rev - 1)} >= {"was"}
    with pytest.raises(KeyError, match="host/h0 exists already"):
        s.load([("host", "h0", {}, {})])


def test_load_events_adds_them_in_order(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.event("farm", "a", "Applied", "live")
    events = [{"time": 1000.0 + i, "kind": "farm", "name": "ab"[i % 3 == 0], "type": "T", "message": str(i)}
              for i in range(150)]
    s.load_events(events)
    assert [e["message"] for e in s.events("farm", "b", limit=1000)] == [str(i) for i in range(0, 150, 3)]
    assert [e["message"] for e in s.events("farm", "a", limit=1000)] == ["live", *(str(i) for i in range(150)
                                                                                if i % 3)]
    assert s.events("farm", "b", limit=1)[0]["time"] == 1147.0


def test_restored_events_keep_their_global_order_at_any_limit(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    events = [{"time": 1000.0 + i, "kind": "farm", "name": f"f{i % 7}", "type": "T", "message": str(i)}
              for i in range(100)]
    s.load_events(events)
    for limit in (1, 5, 13, 99, 100, 500):
        assert [e["message"] for e in s.events(limit=limit)] == [str(i) for i in range(100)][-limit:]
        assert [e["message"] for e in s.events("farm", limit=limit)] == [str(i) for i in range(100)][-limit:]
