"""Import a disk image (raw or qcow2 holding an ext2/3/4 filesystem) into the image store without
mounting it and without booting it (issue 14, item 2).

The format comes from `qemu-img info --output=json`, never from the file name. A raw file is
read by debugfs directly (importext4.py). A qcow2 file is first checked (`qemu-img check`: a
truncated or corrupt file is refused before anything is stored) and then exported as a raw view
by qemu-storage-daemon's FUSE export: a regular file whose bytes are the guest disk, served on
demand, so nothing is copied (this kernel has FUSE but no nbd module). The daemon is stopped by
its PID and the mountpoint removed whatever happens.

The filesystem is either the whole disk or one partition of an MBR or GPT partition table (the
partition whose first sectors hold an ext2/3/4 superblock; with several, as a disk with a /boot
partition has, the caller names one by number); debugfs reads a partition through its
"FILE?offset=BYTES" form. A disk with no such filesystem is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from softudc.images.importext4 import ext4_entries
from softudc.images.importtree import ImportRefused, Progress, check_name, importing
from softudc.images.store import ImageStore, Version

FORMATS = ("raw", "qcow2")
SECTOR = 512
EXT_MAGIC_AT = 1024 + 56  # the superblock starts 1 KiB in; s_magic is 56 bytes into it
EXT_MAGIC = b"\x53\xef"
EXT_INCOMPAT_AT = 0x60  # s_feature_incompat, in the superblock
EXT_INCOMPAT_RECOVER = 0x4  # the journal holds changes not yet written to the filesystem
GPT_SIGNATURE = b"EFI PART"
EXPORT_WAIT = 10.0  # seconds for qemu-storage-daemon to show its FUSE export


def _run(argv: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ImportRefused(f"{argv[0]} is not installed: install qemu-utils and qemu-system-common "
                            f"to import {path}") from None


def disk_format(path: Path) -> str:
    """The image format qemu-img finds in `path` ("raw", "qcow2"); ImportRefused for anything else."""
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file; give the path of a raw or qcow2 disk image")
    done = _run(["qemu-img", "info", "--output=json", str(path)], path)
    if done.returncode != 0:
        raise ImportRefused(f"{path}: qemu-img cannot read it: {done.stderr.strip()}")
    fmt = str(json.loads(done.stdout).get("format", ""))
    if fmt not in FORMATS:
        raise ImportRefused(f"{path}: a {fmt or 'unknown'} image; convert it first "
                            f"(qemu-img convert -O qcow2 {path} disk.qcow2)")
    return fmt


def check_qcow2(path: Path) -> None:
    """Refuse a qcow2 file that `qemu-img check` finds corrupt or truncated (leaked clusters are
    harmless: status 3 passes)."""
    done = _run(["qemu-img", "check", "-f", "qcow2", str(path)], path)
    if done.returncode not in (0, 3):
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise ImportRefused(f"{path}: a damaged qcow2 image (truncated or corrupt): "
                            f"{'; '.join(why[:2]) or 'qemu-img check failed'}; nothing was imported")


def _mounted(mountpoint: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mountpoint) for line in f)


def _qsd_argv(path: Path, fmt: str, mountpoint: Path) -> list[str]:
    filename = str(path.resolve()).replace(",", ",,")  # a comma ends a QEMU option value unless doubled
    return ["qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=file,filename={filename},read-only=on",
            "--blockdev", f"driver={fmt},node-name=disk,file=file,read-only=on",
            "--export", f"type=fuse,id=export,node-name=disk,mountpoint={mountpoint},writable=off"]


def _wait_export(proc: subprocess.Popen[bytes], mountpoint: Path, path: Path) -> None:
    deadline = time.monotonic() + EXPORT_WAIT
    while not _mounted(mountpoint):
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise ImportRefused(f"{path}: qemu-storage-daemon could not export it: {err}")
        if time.monotonic() > deadline:
            raise ImportRefused(f"{path}: qemu-storage-daemon's FUSE export did not appear in {EXPORT_WAIT:.0f}s")
        time.sleep(0.05)


@contextmanager
def fuse_view(path: Path, fmt: str) -> Iterator[Path]:
    """A raw, read-only view of disk image `path` as a file, while the daemon serving it runs."""
    tmp = Path(tempfile.mkdtemp(prefix="softudc-qsd-"))
    mountpoint = tmp / "disk"
    mountpoint.touch()
    proc = None
    try:
        proc = subprocess.Popen(_qsd_argv(path, fmt, mountpoint), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_export(proc, mountpoint, path)
        yield mountpoint
    finally:
        if proc is not None:
            proc.terminate()  # qsd unmounts its export on SIGTERM
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
        if _mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _has_ext(f: BinaryIO, offset: int) -> bool:
    f.seek(offset + EXT_MAGIC_AT)
    return f.read(2) == EXT_MAGIC


def partitions(head: bytes, gpt_entries: bytes = b"") -> list[tuple[int, int]]:
    """(number, byte offset) of the partitions an MBR (first sector of `head`) or a GPT (header in
    the second sector, its entry array in `gpt_entries`) lists, numbered as Linux does (sda1 is 1);
    [] when there is no table."""
    if head[SECTOR:SECTOR + 8] == GPT_SIGNATURE:
        count, size = struct.unpack_from("<II", head, SECTOR + 80)
        if size < 128:  # the UEFI spec's smallest entry (128 * 2**n bytes): anything less is not a GPT
            return []
        out = []
        for i in range(min(count, len(gpt_entries) // size)):
            entry = gpt_entries[i * size:(i + 1) * size]
            if entry[:16] != bytes(16):  # an all-zero type GUID is an unused slot
                out.append((i + 1, struct.unpack_from("<Q", entry, 32)[0] * SECTOR))
        return out
    if head[510:512] != b"\x55\xaa":
        return []
    out = []
    for i in range(4):
        kind, start = head[446 + 16 * i + 4], struct.unpack_from("<I", head, 446 + 16 * i + 8)[0]
        if kind not in (0, 0xEE) and start:
            out.append((i + 1, start * SECTOR))
    return out


def ext_filesystems(raw: Path, source: str) -> list[tuple[int, int]]:
    """(partition number, byte offset) of every ext2/3/4 filesystem in raw disk `raw`: [(0, 0)]
    for a whole-disk one."""
    try:
        with open(raw, "rb") as f:
            if _has_ext(f, 0):
                return [(0, 0)]
            f.seek(0)
            head = f.read(2 * SECTOR)
            gpt = b""
            if head[SECTOR:SECTOR + 8] == GPT_SIGNATURE:
                lba, count, size = struct.unpack_from("<QII", head, SECTOR + 72)
                f.seek(lba * SECTOR)
                gpt = f.read(min(count * size, 1 << 20))
            return [(n, off) for n, off in partitions(head, gpt) if _has_ext(f, off)]
    except OSError as e:
        raise ImportRefused(f"{source}: cannot read the disk: {e}; is the image truncated?") from None


def find_filesystem(raw: Path, source: str, partition: int | None = None) -> int:
    """The byte offset of the ext2/3/4 filesystem to import from raw disk `raw`: the one there is,
    or partition number `partition` when there are several."""
    found = ext_filesystems(raw, source)
    listed = ", ".join(f"{n} (at byte {off})" for n, off in found if n)
    if partition is not None:
        for n, off in found:
            if n == partition:
                return off
        raise ImportRefused(f"{source}: partition {partition} holds no ext2/3/4 filesystem"
                            + (f"; these do: {listed}" if listed else ""))
    if len(found) == 1:
        return found[0][1]
    if not found:
        raise ImportRefused(f"{source}: no ext2/3/4 filesystem (looked at the whole disk and its MBR/GPT "
                            "partitions); import a disk that holds one")
    raise ImportRefused(f"{source}: {len(found)} ext2/3/4 partitions: {listed}; choose one with --partition N "
                        "(the root filesystem, not /boot)")


def check_journal(raw: Path, offset: int, source: str) -> None:
    """Refuse a filesystem whose journal still holds changes (its RECOVER flag is set: the guest
    was not shut down cleanly). debugfs reads it without replaying the journal, so it would see
    the files as they were before those changes: an import would be wrong without a word."""
    with open(raw, "rb") as f:
        f.seek(offset + 1024 + EXT_INCOMPAT_AT)
        incompat = int.from_bytes(f.read(4), "little")
    if incompat & EXT_INCOMPAT_RECOVER:
        raise ImportRefused(f"{source}: the filesystem's journal needs recovery (the guest was not shut down "
                            "cleanly); shut it down cleanly, or run `e2fsck -fy` on a copy, and import that")


@contextmanager
def _raw(path: Path, fmt: str) -> Iterator[Path]:
    if fmt == "raw":
        yield path
    else:
        with fuse_view(path, fmt) as view:
            yield view


@contextmanager
def _plain_name(raw: Path) -> Iterator[Path]:
    """`raw`, or a symlink to it whose name has no "?": debugfs cuts a name at "?" (the start of
    its I/O options, "FILE?offset=N")."""
    if "?" not in str(raw):
        yield raw
        return
    with tempfile.TemporaryDirectory(prefix="softudc-disk-") as tmp:
        link = Path(tmp) / "disk"
        link.symlink_to(raw.resolve())
        yield link


def import_disk(store: ImageStore, path: Path, *, name: str | None, partition: int | None = None,
                progress: Progress | None = None, how: str | None = None) -> Version:
    """Import the ext2/3/4 filesystem of disk image `path` (the one it holds, or its partition
    number `partition`) as a new version of image `name`."""
    check_name(name)
    path = Path(path)
    fmt = disk_format(path)
    if fmt == "qcow2":
        check_qcow2(path)
    with importing(store):
        with _raw(path, fmt) as raw, _plain_name(raw) as plain:
            offset = find_filesystem(raw, str(path), partition)
            check_journal(raw, offset, str(path))
            image = f"{plain}?offset={offset}" if offset else str(plain)
            if progress:
                progress(f"{path}: {fmt}, ext filesystem at byte {offset}; reading it with debugfs")
            entries = ext4_entries(image, store.content, str(path), progress)
        return store.commit(entries, name=name, how=how or f"import disk {os.path.abspath(path)}")
