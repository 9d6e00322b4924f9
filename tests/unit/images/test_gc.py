from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from softudc.images import gc
from softudc.images.gc import GcError, collect
from softudc.images.manifest import Entry
from softudc.images.store import ImageStore
from softudc.images.verify import verify


def tree(store: ImageStore, *files: tuple[str, bytes]) -> list[Entry]:
    return [Entry("/", "dir", 0o755)] + [
        store.content.entry_for_file(p, io.BytesIO(d), mode=0o644, uid=0, gid=0) for p, d in files]


def age(store: ImageStore, seconds: float = 3600) -> None:
    """Makes every object look written an hour ago (older than any mark)."""
    for digest, _ in store.content.objects():
        path = store.content.path_of(digest)
        t = path.stat().st_mtime - seconds
        os.utime(path, (t, t))


def objects(store: ImageStore) -> dict[str, int]:
    return dict(store.content.objects())


@pytest.fixture
def two(tmp_path: Path) -> ImageStore:
    store = ImageStore.open(tmp_path)
    store.commit(tree(store, ("/shared", b"S" * 5000), ("/a", b"only a")), name="a", how="t")
    store.commit(tree(store, ("/shared", b"S" * 5000), ("/b", b"only b")), name="b", how="t")
    return store


def test_gc_frees_exactly_what_no_other_version_references(two: ImageStore) -> None:
    store = two
    a_manifest = store.resolve("a").digest
    only_a = next(e.digest for e in store.manifest("a") if e.path == "/a")
    before = objects(store)
    store.untag("a")
    age(store)
    messages: list[str] = []
    dry = collect(store, dry_run=True, progress=messages.append)
    assert objects(store) == before  # dry run: nothing deleted
    assert (dry.swept_objects, dry.swept_bytes) == (2, before[a_manifest] + before[only_a])
    assert any("would remove 2 objects" in m for m in messages)
    real = collect(store)
    assert (real.swept_objects, real.swept_bytes) == (dry.swept_objects, dry.swept_bytes)
    assert set(objects(store)) == set(before) - {a_manifest, only_a}
    assert [e.path for e in store.manifest("b")] == ["/", "/b", "/shared"]
    assert [store.content.read(e) for e in store.manifest("b")[1:]] == [b"only b", b"S" * 5000]
    assert len(store.versions()) == 2  # the row (history) stays
    assert collect(store).swept_objects == 0


def test_keep_holds_versions_a_vm_uses(two: ImageStore) -> None:
    store = two
    digest = store.resolve("a").digest
    store.untag("a")
    age(store)
    assert collect(store, keep=[digest]).swept_objects == 0
    assert store.manifest(digest)


def test_young_objects_are_never_swept(two: ImageStore) -> None:
    store = two
    store.untag("a")  # objects were written just now: younger than the mark
    report = collect(store)
    assert report.swept_objects == 0 and report.young_objects == 2


def test_objects_of_an_import_in_progress_survive(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    store.commit(tree(store), name="base", how="t")
    writer = ImageStore.open(tmp_path)  # another importer, not committed yet
    pending = writer.content.put(b"half an import")
    lease = writer.content._lease
    assert lease is not None
    os.utime(writer.content.path_of(pending), (lease.began + 1, lease.began + 1))
    an_hour_later = lease.began + 3600  # the import has run for an hour
    assert collect(store, clock=lambda: an_hour_later).young_objects == 1
    assert writer.content.has(pending)
    writer.content.release_lease()  # (it gave up without committing)
    assert collect(store, clock=lambda: an_hour_later).swept_objects == 1
    assert not writer.content.has(pending)


def test_reused_object_is_kept(two: ImageStore) -> None:
    store = two
    store.untag("a")
    age(store)
    only_a = store.content.put(b"only a")  # an import reuses it after the untag: fresh again
    store.content.release_lease()
    assert collect(store).swept_objects == 1  # a's manifest only
    assert store.content.has(only_a)


def test_unreadable_manifest_stops_the_gc(two: ImageStore) -> None:
    store = two
    store.untag("a")
    age(store)
    store.content.path_of(store.resolve("b").digest).write_bytes(b"junk")
    before = objects(store)
    with pytest.raises(GcError, match="nothing was removed"):
        collect(store)
    assert objects(store) == before


def test_sweep_puts_back_an_object_touched_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "obj"
    path.write_bytes(b"x")
    assert not gc._sweep(path, cutoff=0)  # mtime (now) is newer than the cutoff
    assert path.read_bytes() == b"x"
    assert gc._sweep(path, cutoff=path.stat().st_mtime + 1)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def slow_tree(store: ImageStore, *files: tuple[str, bytes]) -> list[Entry]:
    """tree(), taking a while: an import that outlives the GC's slack."""
    out = [Entry("/", "dir", 0o755)]
    for p, d in files:
        time.sleep(0.01)
        out.append(store.content.entry_for_file(p, io.BytesIO(d), mode=0o644, uid=0, gid=0))
    return out


def test_gc_racing_imports_never_loses_their_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An import reusing old, unreferenced objects while GCs run: whatever it commits is whole
    (without leases, this loses objects the import reused early on)."""
    monkeypatch.setattr(gc, "SLACK", 0.05)
    base = ImageStore.open(tmp_path)
    files = [(f"/f{i}", f"content {i}".encode() * 50) for i in range(30)]
    swept = 0
    for round_ in range(3):
        base.commit(tree(base, *files), name="old", how="t")
        base.untag("old")
        age(base)  # every object is old and unreferenced: a GC would take all of them
        writer, stop = ImageStore.open(tmp_path), threading.Event()

        def gcs(stop: threading.Event) -> None:
            nonlocal swept
            while not stop.is_set():
                with ImageStore.open(tmp_path) as store:
                    swept += collect(store).swept_objects

        g = threading.Thread(target=gcs, args=(stop,))
        g.start()
        try:
            writer.commit(slow_tree(writer, *files, ("/round", str(round_).encode())), name="new", how="t")
        finally:
            stop.set()
            g.join()
        report = verify(base, ["new"])
        assert report.ok, report.as_dict()
        base.untag("new")
    assert swept >= 3  # the GCs did run and sweep (the old manifests)


def test_cached_disks_of_versions_not_kept_go_too(two: ImageStore) -> None:
    store = two
    disks = store.root / "disks"
    disks.mkdir()
    a, b = store.resolve("a").digest[7:], store.resolve("b").digest[7:]
    for name in (f"{a}.img", f"{a}-4294967296.img", f"{b}.img", f".{a}.img.1234.tmp"):
        (disks / name).write_bytes(b"disk" * 1024)
    store.untag("a")
    age(store)
    for disk in disks.iterdir():
        t = disk.stat().st_mtime - 3600
        os.utime(disk, (t, t))
    dry = collect(store, dry_run=True)
    assert dry.swept_disks == 2 and dry.swept_disk_bytes >= 8192 and len(list(disks.iterdir())) == 4
    assert collect(store).swept_disks == 2
    assert sorted(p.name for p in disks.iterdir()) == sorted([f"{b}.img", f".{a}.img.1234.tmp"])


def test_leftovers_of_dead_writers_and_gcs(two: ImageStore) -> None:
    store = two
    digest = store.resolve("b").digest
    path = store.content.path_of(digest)
    aside = path.with_name(f".{path.name}.gc-dead")
    os.rename(path, aside)  # a GC died between its rename and its decision
    tmp = path.with_name(f".{path.name}.beef.tmp")
    tmp.write_bytes(b"half")  # a writer died before its rename
    os.utime(tmp, (1000, 1000))
    with pytest.raises(GcError):  # too recent to be a dead GC's: b's manifest is missing for now
        collect(store)
    assert aside.exists() and tmp.exists()
    collect(store, clock=lambda: time.time() + 3600)
    assert path.exists() and not aside.exists() and not tmp.exists()
    assert store.manifest("b")
