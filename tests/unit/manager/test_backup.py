"""Logical backups: SQLite to etcd and back with objects and events equal; bad files refused with
the line and field named, and nothing written."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

import softudc.manager.backup as backup_module
from softudc.manager.backup import BackupError, backup, read_backup, restore
from softudc.manager.store import Store
from tests.etcd_fixture import StoreBackend


def fill(s: Store) -> None:
    s.put("farm", "shop", {"descriptor": "vms: 2"})
    s.set_status("farm", "shop", {"vnet_ids": {"front": 7}, "secret": "k3y"})
    s.put("host", "h1", {"capacity": {"vcpus": 8}})
    s.put("farm", "gone", {})
    s.event("farm", "gone", "Applied", "by alice")
    s.delete("farm", "gone")  # a tombstone: not in the backup (its events are)
    s.put_event("farm", "shop", "Applied", "by bob", 1000.0)
    s.event("farm", "shop", "Planned", "2 VMs")
    s.event("host", "h1", "Joined", "ü")


def state(s: Store) -> tuple[Any, ...]:
    objects = [(o.kind, o.name, o.spec, o.status) for k in s.kinds() for o in s.objects(k)]
    return objects, s.events(limit=1000)


def dump(s: Store) -> bytes:
    out = io.BytesIO()
    backup(s, out)
    return out.getvalue()


def test_a_backup_restores_into_the_other_backend_and_back(etcd_cluster: Any, etcd_prefix: str,
                                                           tmp_path: Any) -> None:
    from softudc.manager.etcdstore import EtcdStore
    from softudc.manager.store import SqliteStore

    sqlite, again = SqliteStore(tmp_path / "a.db"), SqliteStore(tmp_path / "b.db")
    etcd = EtcdStore(etcd_cluster.client(), etcd_prefix, owns_client=True)
    try:
        fill(sqlite)
        data = dump(sqlite)
        header = json.loads(data.splitlines()[0])
        assert (header["softudc-backup"], header["source"], header["revision"]) == (1, "sqlite", sqlite.revision())
        counts = restore(etcd, io.BytesIO(data))
        assert (counts.objects, counts.events, counts.kinds) == (2, 4, {"farm": 1, "host": 1})
        assert state(etcd) == state(sqlite)
        back = dump(etcd)
        assert json.loads(back.splitlines()[0])["source"] == "etcd"
        restore(again, io.BytesIO(back))
        assert state(again) == state(sqlite)
    finally:
        for s in (sqlite, again, etcd):
            s.close()


def test_a_non_empty_store_is_refused_unless_forced(store_backend: StoreBackend) -> None:
    target = store_backend.open()
    fill(target)
    data = dump(target)
    with pytest.raises(BackupError, match=r"already holds.*--force"):
        restore(target, io.BytesIO(data))
    target.put("farm", "other", {})
    target.set_status("farm", "shop", {"stale": True})
    counts = restore(target, io.BytesIO(data), force=True)
    assert counts.objects == 2
    assert target.get("farm", "other") is None  # replaced: what the backup lacks is deleted
    assert target.get("farm", "shop").status == {"vnet_ids": {"front": 7}, "secret": "k3y"}  # type: ignore[union-attr]


HEADER = '{"softudc-backup": 1, "taken": "x", "source": "etcd", "revision": 3}'
OBJ = '{"object": {"kind": "farm", "name": "a", "spec": {}, "status": {}}}'


@pytest.mark.parametrize(("text", "error"), [
    ("", "empty file"),
    ("garbage", "line 1: not JSON"),
    ('{"a": 1}', "line 1: no header"),
    ('{"softudc-backup": 2, "source": "etcd", "revision": 1}', "line 1: field softudc-backup is 2"),
    ('{"softudc-backup": 1, "source": "mysql", "revision": 1}', "line 1: field source"),
    ('{"softudc-backup": 1, "source": "etcd", "revision": "1"}', "line 1: field revision"),
    (HEADER + "\n" + OBJ + "\n{", "line 3: not JSON"),
    (HEADER + "\n\n" + OBJ + '\n{"object": {"kind": "farm", "name": "", "spec": {}, "status": {}}}',
     "line 4: field object.name must be a non-empty string"),
    (HEADER + '\n{"object": {"kind": "farm", "name": "a", "spec": [], "status": {}}}', "line 2: field object.spec"),
    (HEADER + '\n{"object": {"kind": "farm", "name": "a", "spec": {}}}', "line 2: object has no field 'status'"),
    (HEADER + '\n{"object": {"kind": "f", "name": "a", "spec": {}, "status": {}, "x": 1}}', "unknown field"),
    (HEADER + "\n" + OBJ + "\n" + OBJ, "line 3: object farm/a is in the file twice"),
    (HEADER + '\n{"event": {"time": true, "kind": "f", "name": "a", "type": "t", "message": "m"}}',
     "line 2: field event.time must be a non-empty number"),
    (HEADER + '\n{"thing": 1}', "line 2: expected"),
    (HEADER + "\n[1]", "line 2: expected"),
])
def test_bad_files_are_refused_naming_the_line_and_nothing_is_written(store_backend: StoreBackend, text: str,
                                                                        error: str) -> None:
    s = store_backend.open()
    with pytest.raises(BackupError, match=error) as e:
        restore(s, io.BytesIO(text.encode()), name="b.jsonl")
    assert str(e.value).startswith("b.jsonl: ") and "nothing was restored" in str(e.value)
    assert s.kinds() == [] and s.revision() == 0


def test_a_good_file_reads_back() -> None:
    data = read_backup(io.BytesIO((HEADER + "\n" + OBJ + "\n").encode()))
    assert data.header["revision"] == 3 and data.objects == [{"kind": "farm", "name": "a", "spec": {}, "status": {}}]


def test_large_stores_report_progress(store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup_module, "PROGRESS_EVERY", 10)
    s = store_backend.open()
    for i in range(11):
        s.put("host", f"h{i}", {})
    seen: list[tuple[str, int]] = []
    out = io.BytesIO()
    backup(s, out, progress=lambda what, n: seen.append((what, n)))
    assert seen == [("objects", 10)]
    seen.clear()
    target = store_backend.open()
    restore(target, io.BytesIO(out.getvalue()), force=True, progress=lambda what, n: seen.append((what, n)))
    assert seen == [("objects", 10)]
