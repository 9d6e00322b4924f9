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
