from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.images import importdisk
from softudc.images.importdisk import find_filesystem, import_disk, partitions
from softudc.images.importtree import ImportRefused, import_tree
from softudc.images.manifest import Entry, index
from softudc.images.store import ImageStore

from .test_importtree import make_tree

pytestmark = pytest.mark.skipif(not (shutil.which("mke2fs") and shutil.which("debugfs") and shutil.which("qemu-img")),
                                reason="needs e2fsprogs and qemu-img")
FUSE = os.path.exists("/dev/fuse") and shutil.which("qemu-storage-daemon") is not None


def mkfs(tree: Path, image: Path, size: str = "16M", offset: int = 0, kind: str = "ext4",
         features: str = "") -> Path:
    extra = ["-E", f"offset={offset}"] if offset else []
    extra += ["-O", features] if features else []
    subprocess.run(["mke2fs", "-q", "-F", "-t", kind, *extra, "-d", str(tree), str(image), size], check=True)
    return image


def comparable(entries: list[Entry]) -> dict[str, Entry]:
    """What mke2fs -d copies from a tree: all but the root's own metadata and lost+found."""
    return {p: e for p, e in index(entries).items() if p != "/" and not p.startswith("/lost+found")}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    t = make_tree(tmp_path)
    (t / "big").write_bytes(os.urandom(3 << 20))  # chunked, and more than one debugfs dump batch below
    (t / ("long" * 20)).symlink_to("/" + "x" * 100)  # a slow symlink: its target in a block
    for name in ("user.a b", 'user.q"x', "user.back\\slash\x01"):  # names debugfs prints escaped
        os.setxattr(t / "etc" / "empty", name, name.encode())
    with open(t / "sparse", "wb") as f:  # a trailing hole
        f.write(b"x")
        f.truncate(1 << 20)
    return t


def test_raw_ext4_matches_the_tree(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("softudc.images.importext4.BATCH_BYTES", 1 << 20)
    store = ImageStore.open(tmp_path / "store")
    disk = mkfs(tree, tmp_path / "disk.raw")
    notes: list[str] = []
    v = import_disk(store, disk, name="d", progress=notes.append)
    assert v.how == f"import disk {disk}"
    want = comparable(store.manifest(import_tree(store, tree, name="t").digest))
    assert comparable(store.manifest("d")) == want
    assert index(store.manifest("d"))["/lost+found"].mode == 0o700
    assert any("debugfs" in n for n in notes) and not any("skipped" in n for n in notes)


@pytest.mark.parametrize(("kind", "features"), [("ext2", ""), ("ext3", ""), ("ext4", "inline_data")])
def test_other_ext_flavours(tmp_path: Path, tree: Path, kind: str, features: str) -> None:
    store = ImageStore.open(tmp_path / "store")
    (tree / "tiny").write_bytes(b"inline")  # with inline_data, kept in the inode (its system.data xattr)
    if features == "inline_data":
        (tree / "sparse").unlink()  # mke2fs 1.47.0 -O inline_data -d stores it 1024 bytes long: its bug, not ours
    v = import_disk(store, mkfs(tree, tmp_path / "disk.raw", kind=kind, features=features), name="d")
    m = comparable(store.manifest(v.digest))
    assert m == comparable(store.manifest(import_tree(store, tree, name="t").digest))
    assert m["/tiny"].xattrs == ()


@pytest.mark.skipif(not FUSE, reason="needs /dev/fuse and qemu-storage-daemon")
def _qsd_mounts() -> set[str]:
    return {line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "softudc-qsd-" in line}


def test_qcow2_through_a_fuse_export(tmp_path: Path, tree: Path) -> None:
    mounted_before = _qsd_mounts()
    store = ImageStore.open(tmp_path / "store")
    raw = mkfs(tree, tmp_path / "disk?.raw")  # debugfs cuts names at "?"
    qcow2 = tmp_path / "disk,1.qcow2"  # a comma must be escaped for QEMU
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    v = import_disk(store, qcow2, name="q")
    assert v.digest == import_disk(store, raw, name="r").digest
    overlay = tmp_path / "overlay.qcow2"  # an empty overlay: everything read from its backing file
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", qcow2.name, "-F", "qcow2", str(overlay)],
                   check=True)
    assert import_disk(store, overlay, name="o").digest == v.digest
    # Every FUSE export this test made is unmounted again. Another xdist worker may be importing through
    # one of its own at this moment (CI saw one): such a mount goes away when its import ends.
    deadline = time.monotonic() + 20
    while _qsd_mounts() - mounted_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _qsd_mounts() - mounted_before


def test_truncated_qcow2_is_refused(tmp_path: Path, tree: Path) -> None:
    store = ImageStore.open(tmp_path / "store")
    raw = mkfs(tree, tmp_path / "disk.raw")
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    data = qcow2.read_bytes()
    qcow2.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImportRefused, match=r"disk\.qcow2: a damaged qcow2 image"):
        import_disk(store, qcow2, name="q")
    assert list(store.content.objects()) == [] and store.tags() == {}


def test_not_ext4_is_refused(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path / "store")
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    with pytest.raises(ImportRefused, match=r"junk\.img: no ext2/3/4 filesystem"):
        import_disk(store, junk, name="j")
    with pytest.raises(ImportRefused, match="no such file"):
        import_disk(store, tmp_path / "missing.img", name="j")
    assert list(store.content.objects()) == []


def test_corrupt_superblock_is_refused(tmp_path: Path, tree: Path) -> None:
    store = ImageStore.open(tmp_path / "store")
    disk = mkfs(tree, tmp_path / "disk.raw")
    with open(disk, "r+b") as f:  # keep the magic, break the rest of the superblock
        f.seek(1024)
        f.write(b"\xff" * 56)
    with pytest.raises(ImportRefused, match=r"disk\.raw: cannot read it as an ext2/3/4 filesystem: debugfs"):
        import_disk(store, disk, name="d")
    assert list(store.content.objects()) == []


def test_journal_needing_recovery_is_refused(tmp_path: Path, tree: Path) -> None:
    disk = mkfs(tree, tmp_path / "dirty.raw")
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", str(disk)], check=True, capture_output=True)
    store = ImageStore.open(tmp_path / "store")
    with pytest.raises(ImportRefused, match=r"dirty\.raw: the filesystem's journal needs recovery"):
        import_disk(store, disk, name="d")
    assert list(store.content.objects()) == []
    subprocess.run(["e2fsck", "-fy", str(disk)], capture_output=True)  # replays (here: clears) the journal
    import_disk(store, disk, name="d")


def mbr(*starts: int) -> bytes:
    head = bytearray(512)
    for i, start in enumerate(starts):
        struct.pack_into("<BBHBBHII", head, 446 + 16 * i, 0, 0, 0, 0x83, 0, 0, start, 2048)
    head[510:512] = b"\x55\xaa"
    return bytes(head)


def test_partitioned_raw(tmp_path: Path, tree: Path) -> None:
    store = ImageStore.open(tmp_path / "store")
    disk = tmp_path / "part.raw"
    with open(disk, "wb") as f:
        f.write(mbr(2048))
        f.truncate(24 << 20)
    mkfs(tree, disk, "20M", offset=2048 * 512)
    assert find_filesystem(disk, "part.raw") == 2048 * 512
    v = import_disk(store, disk, name="p")
    assert comparable(store.manifest(v.digest)) == comparable(store.manifest(import_tree(store, tree, name="t").digest))


def gpt(*starts: int) -> tuple[bytes, bytes]:
    """A protective MBR and GPT header (2 sectors), and an entry array for partitions at `starts`
    (no CRCs: nothing here checks them)."""
    head = bytearray(mbr() + bytes(512))
    head[446 + 4] = 0xEE  # the protective MBR entry is not a partition
    head[512:520] = importdisk.GPT_SIGNATURE
    struct.pack_into("<QII", head, 512 + 72, 2, 4, 128)
    entries = bytearray(4 * 128)
    for i, start in enumerate(starts):
        entries[i * 128:i * 128 + 16] = bytes([i + 1]) * 16
        struct.pack_into("<QQ", entries, i * 128 + 32, start, start + 4096)
    return bytes(head), bytes(entries)


def test_gpt_partitioned_raw(tmp_path: Path, tree: Path) -> None:
    disk = tmp_path / "gpt.raw"
    head, entries = gpt(34, 4096)  # a non-ext partition first (an EFI one, say), then ext4
    with open(disk, "wb") as f:
        f.write(head + entries)
        f.truncate(24 << 20)
    mkfs(tree, disk, "18M", offset=4096 * 512)
    store = ImageStore.open(tmp_path / "store")
    v = import_disk(store, disk, name="g")
    assert comparable(store.manifest(v.digest)) == comparable(store.manifest(import_tree(store, tree, name="t").digest))


def test_two_ext_partitions_need_a_choice(tmp_path: Path, tree: Path) -> None:
    disk = tmp_path / "two.raw"
    boot = tmp_path / "boot"
    (boot / "grub").mkdir(parents=True)
    with open(disk, "wb") as f:
        f.write(mbr(2048, 0, 18432))  # sda1 /boot, sda3 the root
        f.truncate(40 << 20)
    mkfs(boot, disk, "8M", offset=2048 * 512)
    mkfs(tree, disk, "16M", offset=18432 * 512)
    store = ImageStore.open(tmp_path / "store")
    with pytest.raises(ImportRefused, match=r"2 ext2/3/4 partitions: 1 \(at byte 1048576\), 3 \(at byte 9437184\); "
                       "choose one with --partition N"):
        import_disk(store, disk, name="two")
    with pytest.raises(ImportRefused, match="partition 2 holds no ext2/3/4 filesystem; these do: 1"):
        import_disk(store, disk, name="two", partition=2)
    assert list(store.content.objects()) == []
    root = import_disk(store, disk, name="two", partition=3)
    want = import_tree(store, tree, name="t")
    assert comparable(store.manifest(root.digest)) == comparable(store.manifest(want.digest))
    assert "/grub" in index(store.manifest(import_disk(store, disk, name="b", partition=1).digest))


def test_partition_tables() -> None:
    assert partitions(mbr(2048, 0, 4096) + bytes(512)) == [(1, 2048 * 512), (3, 4096 * 512)]
    assert partitions(bytes(1024)) == []
    gpt_head, entries = gpt(2048, 10240)
    assert partitions(gpt_head, entries) == [(1, 2048 * 512), (2, 10240 * 512)]


@pytest.mark.skipif(not FUSE, reason="needs /dev/fuse and qemu-storage-daemon")
def test_failure_inside_the_fuse_export_cleans_up(tmp_path: Path) -> None:
    junk, qcow2 = tmp_path / "junk.raw", tmp_path / "junk.qcow2"
    junk.write_bytes(os.urandom(1 << 20))
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(junk), str(qcow2)], check=True)
    with pytest.raises(ImportRefused, match=r"junk\.qcow2: no ext2/3/4 filesystem"):
        import_disk(ImageStore.open(tmp_path / "store"), qcow2, name="j")
    assert "softudc-qsd-" not in Path("/proc/self/mountinfo").read_text()
    qsd = subprocess.run(["pgrep", "-f", f"qemu-storage-daemon.*{qcow2}"], capture_output=True, text=True)
    assert qsd.stdout == ""


@given(st.binary(min_size=1024, max_size=1024), st.binary(max_size=1024), st.booleans())
def test_partition_tables_from_garbage(head: bytes, entries: bytes, gpt: bool) -> None:
    if gpt:
        head = head[:512] + importdisk.GPT_SIGNATURE + head[520:]
    for number, offset in partitions(head, entries):
        assert number >= 1 and offset >= 0 and offset % 512 == 0
