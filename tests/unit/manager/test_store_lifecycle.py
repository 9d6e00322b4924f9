"""An object's life in the store: a name written again after a delete is a new object (audit
R6, R28), the event log is bounded per object, and tombstones are compacted with their events."""

from __future__ import annotations

import pytest

import softudc.manager.store as store_module
from tests.etcd_fixture import StoreBackend


def test_r6_a_deleted_farm_written_again_starts_with_an_empty_status(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.put("farm", "x", {"descriptor": "1"})
    s.set_status("farm", "x", {"vnet_ids": {"v": 2}, "instances": [{"name": "a-0", "host": "h1"}]})
    s.delete("farm", "x")
    s.put("farm", "x", {"descriptor": "2"})
    obj = s.get("farm", "x")
    assert obj is not None and obj.status == {} and obj.spec == {"descriptor": "2"}
    # An update of a live object keeps its status, as before.
    s.set_status("farm", "x", {"vnet_ids": {"w": 3}})
    s.put("farm", "x", {"descriptor": "3"})
    assert s.get("farm", "x").status == {"vnet_ids": {"w": 3}}  # type: ignore[union-attr]


def test_r28_the_events_of_a_deleted_farm_are_not_shown_to_the_next_owner_of_the_name(
        store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.put("farm", "x", {})
    s.event("farm", "x", "Applied", "by alice: secret plans")
    s.event("farm", "y", "Applied", "by bob")
    s.delete("farm", "x")
    s.event("farm", "x", "Deleted", "by alice")
    s.put("farm", "x", {})  # someone else creates x
    assert s.events("farm", "x") == []
    assert [e["message"] for e in s.events("farm", "y")] == ["by bob"]  # others' events stay


def test_r28_events_are_kept_per_object_up_to_a_limit(store_backend: StoreBackend,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_EVENTS", 5)
    s = store_backend.open()
    for i in range(12):
        s.event("farm", "x", "Planned", f"x{i}")
        s.event("farm", "y", "Planned", f"y{i}")
    assert [e["message"] for e in s.events("farm", "x", limit=100)] == [f"x{i}" for i in range(7, 12)]
    assert len(s.events(limit=100)) == 10
    assert store_backend.stored_events() == 10  # dropped from the table, not only from the answer


def test_r28_old_tombstones_are_compacted_with_their_events(store_backend: StoreBackend) -> None:
    s = store_backend.open()
    s.put("farm", "old", {})
    s.event("farm", "old", "Applied", "a")
    s.delete("farm", "old")
    cut = s.revision()
    s.put("farm", "recent", {})
    s.delete("farm", "recent")
    assert s.compact(cut) == 1
    assert [o.name for o in s.changes(0)] == ["recent"]  # the newer tombstone stays for watchers
    assert s.events("farm", "old") == []
    assert s.compact(cut) == 0
