from __future__ import annotations

import base64
import io
import os
import subprocess
from pathlib import Path

import pytest

from softudc.images.content import IntegrityError
from softudc.images.importext4 import ext4_entries
from softudc.images.manifest import Entry, sort_key
from softudc.images.materialize import MaterializeError, cached_path, materialize, needed_bytes, prune
from softudc.images.store import ImageError, ImageStore

BIG = bytes(range(256)) * 12000  # ~3 MB: stored in FastCDC chunks
XATTR = (("user.note", base64.b64encode(b"kept").decode()),)


def tree(store: ImageStore) -> list[Entry]:
    def f(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0,
          xattrs: tuple[tuple[str, str], ...] = ()) -> Entry:
        return store.content.entry_for_file(path, io.BytesIO(data), mode=mode, uid=uid, gid=gid, xattrs=xattrs)

    return [
        Entry("/", "dir", 0o750, uid=7, gid=8),
        Entry("/etc", "dir", 0o755),
        f("/etc/hostname", b"web\n"),
        f("/etc/copy", b"web\n", mode=0o600, uid=1000, gid=100),  # same content, other inode
        f("/etc/empty", b""),
        f("/etc/noted", b"x", xattrs=XATTR),
        Entry("/etc/os-release", "symlink", 0o777, target="../usr/lib/os-release"),
        Entry("/dev", "dir", 0o755),
        Entry("/dev/null", "device", 0o666, device="c 1 3"),
        Entry("/dev/sda", "device", 0o660, gid=6, device="b 8 0"),
        Entry("/run", "dir", 0o755),
        Entry("/run/initctl", "fifo", 0o600),
        Entry("/usr", "dir", 0o755),
        Entry("/usr/bin", "dir", 0o555),  # read-only: filled before its mode is set
        f("/usr/bin/su", b"#!/bin/sh\n", mode=0o4755),
        f("/usr/bin/big", BIG, mode=0o755),
        Entry("/usr/lib", "dir", 0o755),
        f("/usr/lib/os-release", b'PRETTY_NAME="Test"\n'),
        Entry("/usr/lib/" + "long" * 20, "symlink", 0o777, target="/" + "t" * 100),  # a slow symlink
    ]


def _store(tmp_path: Path) -> tuple[ImageStore, list[Entry]]:
    store = ImageStore.open(tmp_path / "store")
    entries = tree(store)
    store.commit(entries, name="t", how="test")
    return store, entries


def test_round_trip_through_an_independent_reader(tmp_path: Path) -> None:
    """What debugfs reads back out of the image is the manifest (plus mke2fs's lost+found)."""
    store, _ = _store(tmp_path)
    image = materialize(store, "t", cache_dir=tmp_path / "cache")
    back = ext4_entries(str(image), store.content, "test")
    got = sorted((e for e in back if not e.path.startswith("/lost+found")), key=lambda e: sort_key(e.path))
    assert got == store.manifest("t")
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_same_manifest_same_bytes_and_cached(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    lines: list[str] = []
    a = materialize(store, "t", cache_dir=tmp_path / "a", progress=lines.append)
    b = materialize(store, "t:1", cache_dir=tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert a == cached_path(tmp_path / "a", store.resolve("t").digest)
    before = a.stat().st_mtime_ns
    again: list[str] = []
    assert materialize(store, "t", cache_dir=tmp_path / "a", progress=again.append) == a
    assert a.stat().st_mtime_ns == before and "cached" in again[0]
    assert any("mke2fs" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [a.name]  # no staging or temp left


def test_explicit_size(tmp_path: Path) -> None:
    store, entries = _store(tmp_path)
    fitted, _ = needed_bytes(entries)
    image = materialize(store, "t", cache_dir=tmp_path / "c", size=fitted + (32 << 20))
    assert image.stat().st_size == fitted + (32 << 20)
    with pytest.raises(MaterializeError, match="needs at least"):
        materialize(store, "t", cache_dir=tmp_path / "c", size=1 << 20)
    assert [p.name for p in (tmp_path / "c").iterdir()] == [image.name]


def test_needed_bytes_grows_with_content() -> None:
    small = [Entry("/", "dir", 0o755), Entry("/a", "file", 0o644, size=10, digest="sha256:" + "1" * 64)]
    big = [*small, Entry("/b", "file", 0o644, size=500 << 20, digest="sha256:" + "2" * 64)]
    (s, si), (b, bi) = needed_bytes(small), needed_bytes(big)
    assert s % (1 << 20) == 0 and b - s >= 500 << 20 and bi == si + 1


def test_corrupt_object_leaves_no_image(tmp_path: Path) -> None:
    store, entries = _store(tmp_path)
    victim = next(e for e in entries if e.path == "/usr/lib/os-release")
    path = store.content.path_of(victim.digest)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-3] + b"bad")
    with pytest.raises(IntegrityError, match=victim.digest):
        materialize(store, "t", cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_unknown_ref(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    with pytest.raises(ImageError):
        materialize(store, "nope", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_prune_keeps_the_disks_of_kept_versions(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    cache = tmp_path / "c"
    kept = materialize(store, "t", cache_dir=cache)
    sized = materialize(store, "t", cache_dir=cache, size=kept.stat().st_size + (1 << 20))
    other = cache / ("0" * 64 + ".img")  # a version no longer kept
    other.write_bytes(b"x" * 5000)
    old_stage = cache / ".stage-deadbeef"
    old_stage.mkdir()
    os.utime(old_stage, (0, 0))
    digest = store.resolve("t").digest
    assert {p for p, _ in prune(cache, {digest}, dry_run=True)} == {other, old_stage}
    assert other.exists()
    gone = prune(cache, {digest})
    assert {p for p, _ in gone} == {other, old_stage} and all(n >= 0 for _, n in gone)
    assert sorted(cache.iterdir()) == sorted([kept, sized])
    assert prune(tmp_path / "none", set()) == []
