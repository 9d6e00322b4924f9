from __future__ import annotations

import threading
from pathlib import Path

import pytest

from softudc.manager.store import Conflict, SqliteStore


def test_revisions_compare_and_swap_and_watch(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
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


def test_nothing_is_lost_across_a_restart(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
    s.put("farm", "shop", {"vms": 2})
    s.set_status("farm", "shop", {"conditions": {"Placed": True}})
    s.event("farm", "shop", "Applied", "2 VMs planned")
    s.close()
    again = SqliteStore(tmp_path / "state.db")
    obj = again.get("farm", "shop")
    assert obj and obj.spec == {"vms": 2} and obj.status["conditions"]["Placed"] is True
    assert [e["message"] for e in again.events("farm", "shop")] == ["2 VMs planned"]
    assert again.revision() == obj.revision


def test_concurrent_writers_get_distinct_revisions(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
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


def test_missing_objects_are_reported(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
    with pytest.raises(KeyError):
        s.delete("farm", "nope")
    with pytest.raises(KeyError):
        s.set_status("farm", "nope", {})


def test_watch_returns_at_once_what_changed_after_since(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
    r1 = s.put("farm", "shop", {"vms": 2})
    r2 = s.put("host", "h1", {})
    assert [(o.kind, o.revision) for o in s.watch(r1, timeout=60)] == [("host", r2)]  # no wait: it is there
    assert [o.name for o in s.watch(0, timeout=60)] == ["shop", "h1"]


def test_watch_times_out_empty_and_an_event_is_not_a_change(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
    rev = s.put("farm", "shop", {})
    s.event("farm", "shop", "Applied", "by test")  # the log is not the objects: no revision, no wake
    assert s.watch(rev, timeout=0.05) == []
    assert s.watch(rev, timeout=-1) == []  # a deadline already past asks, and does not wait


def test_watch_wakes_on_a_write_from_another_thread(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
    rev = s.put("farm", "shop", {})
    writer = threading.Timer(0.05, lambda: s.delete("farm", "shop"))
    writer.start()
    got = s.watch(rev, timeout=60)  # long before the timeout: the commit notifies
    writer.join()
    assert [(o.name, o.deleted) for o in got] == [("shop", True)]


def test_watch_sees_another_connection_s_write_by_reading_the_file(tmp_path: Path) -> None:
    s, other = SqliteStore(tmp_path / "state.db"), SqliteStore(tmp_path / "state.db")
    rev = s.revision()
    other.put("farm", "shop", {})  # no notification crosses connections: the watch reads the revision
    assert [o.name for o in s.watch(rev, timeout=0.05)] == ["shop"]
