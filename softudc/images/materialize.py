"""Materialize an image version: its manifest -> an ext4 disk image a guest can boot from (issue 14,
item 3), cached by manifest digest.

    CACHE/<64 hex>.img          the raw ext4 image of the version sha256:<64 hex>
    CACHE/<64 hex>-<bytes>.img  the same, made with an explicit size

The tree is staged in a temporary directory beside the cache (file contents decompressed out of
the content store, each object checked against its digest on the way), then `mke2fs -d STAGING`
writes the filesystem. Nothing in the staging tree is hard-linked: mke2fs -d turns hard links into
hard links inside the image, and two manifest entries are two inodes, so files with the same
content are copied from the first one staged (a copy_file_range, no second decompression).

Reproducible: the same manifest gives the same image, byte for byte, with the same e2fsprogs.
What mke2fs would take from the clock, the host or randomness is fixed:
  - the filesystem UUID and directory hash seed are derived from the manifest digest;
  - E2FSPROGS_FAKE_TIME pins the superblock and creation times, and every staged path gets the
    same atime and mtime (FIXED_TIME: the manifest holds no times);
  - mke2fs copies each inode's ctime from the staging tree (the moment it was staged): a debugfs
    pass afterwards sets every used inode's ctime to FIXED_TIME (mke2fs -d allocates inodes in
    order, so the used ones are 1..N);
  - MKE2FS_CONFIG points at our own copy of Debian's defaults, not the host's /etc/mke2fs.conf.
mke2fs -d keeps mode, owner, xattrs, devices and fifos of every staged path but not of the root
directory or a lost+found it reuses: the same debugfs pass sets those from the manifest.

Written atomically (a temporary file renamed into place): a reader sees a whole image or none.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from softudc.images.content import ContentStore
from softudc.images.manifest import Entry
from softudc.images.store import ImageStore

Progress = Callable[[str], None]
FIXED_TIME = 946684800  # 2000-01-01T00:00:00Z: every timestamp in a materialized image
BLOCK = 4096
INODE_SIZE = 256
PROGRESS_EVERY = 5000
# Debian bookworm's /etc/mke2fs.conf (e2fsprogs 1.47.0), the parts an ext4 mke2fs reads.
MKE2FS_CONF = """[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""


class MaterializeError(Exception):
    """A manifest that cannot become a disk image, or a tool that failed; says what to do."""


def cached_path(cache_dir: Path, digest: str, size: int | None = None) -> Path:
    """Where the image of version `digest` (made with `size`, or the fitted size) is cached."""
    hexd = digest.removeprefix("sha256:")
    return cache_dir / (f"{hexd}-{size}.img" if size else f"{hexd}.img")


def prune(cache_dir: Path, keep: set[str], *, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Removes the cached disks of versions not in `keep` (digests), and leftovers of interrupted
    runs; returns (path, bytes on disk) of each one removed (or, with `dry_run`, to remove)."""
    wanted = {d.removeprefix("sha256:") for d in keep}
    gone = []
    for path in sorted(cache_dir.glob("*")) if cache_dir.is_dir() else []:
        stem = path.name.removesuffix(".img").split("-")[0]
        if path.name.endswith(".img") and not path.name.startswith(".") and stem in wanted:
            continue
        if path.name.startswith(".") and time.time() - path.stat().st_mtime < 3600:
            continue  # a staging tree or temporary image of a materialize still running
        gone.append((path, _du(path)))
        if dry_run:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return gone


def _du(path: Path) -> int:
    if path.is_dir():
        return sum(p.lstat().st_blocks * 512 for p in path.rglob("*"))
    return path.stat().st_blocks * 512


def _blocks(n: int) -> int:
    return -(-n // BLOCK)


def needed_bytes(entries: Iterable[Entry]) -> tuple[int, int]:
    """(filesystem size in bytes, inode count) that hold `entries` with room to spare: content
    blocks, directory blocks, inode tables, plus the journal (mke2fs picks 4 to 64 MiB for images
    up to 16 GiB) and 10% for block group metadata and extent trees."""
    data, count = 0, 0
    dir_bytes: dict[str, int] = {}
    for e in entries:
        count += 1
        parent = e.path.rsplit("/", 1)[0] or "/"
        dir_bytes[parent] = dir_bytes.get(parent, 0) + 12 + len(e.path.rsplit("/", 1)[1].encode())
        if e.type == "file":
            data += _blocks(e.size) * BLOCK
        elif e.type == "symlink" and len(e.target.encode()) >= 60:  # shorter ones fit in the inode
            data += BLOCK
        if e.xattrs:  # may not fit in the inode: one block each, at worst
            data += BLOCK
    data += sum((_blocks(n) + 1) * BLOCK for n in dir_bytes.values()) + BLOCK * (count - len(dir_bytes))
    inodes = count + 64
    total = data + inodes * INODE_SIZE
    total += total // 10 + (64 << 20)
    return -(-total // (1 << 20)) * (1 << 20), inodes


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(f"materialize: {text}")


def materialize(store: ImageStore, ref: str, *, cache_dir: Path, size: int | None = None,
                progress: Progress | None = None) -> Path:
    """The ext4 disk image of version `ref`: the cached one at once if it was made before, else
    made now (ImageError for an unknown ref, MaterializeError if it cannot be made, IntegrityError
    for content that does not match its digest; nothing is cached then)."""
    version = store.resolve(ref)
    final = cached_path(cache_dir, version.digest, size)
    if final.exists():
        _say(progress, f"{ref}: cached {final}")
        return final
    entries = store.manifest(version.digest)
    fitted, inodes = needed_bytes(entries)
    if size is not None and size < fitted:
        raise MaterializeError(f"{ref}: {size} bytes cannot hold this image; it needs at least {fitted} "
                               f"(omit the size to get that)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staging = cache_dir / f".stage-{token}"
    tmp = cache_dir / f".{final.name}.{token}.tmp"
    started = time.monotonic()
    try:
        stage_tree(store.content, entries, staging, progress)
        _say(progress, f"mke2fs: {len(entries)} entries into {(size or fitted) >> 20} MiB")
        make_ext4(staging, tmp, size or fitted, inodes=inodes, digest=version.digest)
        fix_inodes(tmp, entries)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        tmp.unlink(missing_ok=True)
    _say(progress, f"{ref}: {final} in {time.monotonic() - started:.1f} s")
    return final


def _fs_path(staging: Path, path: str) -> Path:
    return staging / path.lstrip("/") if path != "/" else staging


def _device(e: Entry) -> tuple[int, int]:
    kind, major, minor = e.device.split()
    return (stat.S_IFCHR if kind == "c" else stat.S_IFBLK), os.makedev(int(major), int(minor))


def _make(content: ContentStore, e: Entry, dest: Path, first: dict[str, Path]) -> None:
    """One entry's path in the staging tree, without its owner, mode bits or times."""
    if e.type == "dir":
        if e.path != "/":
            dest.mkdir()
    elif e.type == "file":
        if e.digest in first:
            shutil.copyfile(first[e.digest], dest)
        else:
            content.write_to(e, dest)
            first[e.digest] = dest
    elif e.type == "symlink":
        os.symlink(e.target, dest)
    elif e.type == "device":
        kind, dev = _device(e)
        os.mknod(dest, kind | 0o600, dev)
    elif e.type == "fifo":
        os.mkfifo(dest, 0o600)
    else:
        raise MaterializeError(f"{e.path}: unknown entry type {e.type!r}")


def _attributes(e: Entry, dest: Path) -> None:
    """Owner, xattrs, mode and times as the manifest says (a symlink keeps mode 0777)."""
    os.lchown(dest, e.uid, e.gid)  # before chmod: chown clears set-uid/set-gid bits
    for name, value in e.xattrs:
        os.setxattr(dest, name, base64.b64decode(value), follow_symlinks=False)
    if e.type != "symlink":
        os.chmod(dest, e.mode)
    os.utime(dest, (FIXED_TIME, FIXED_TIME), follow_symlinks=False)


def stage_tree(content: ContentStore, entries: list[Entry], staging: Path, progress: Progress | None = None) -> None:
    """The tree of `entries` (sorted, as manifests are) under the new directory `staging`.
    Directories get their attributes last, once nothing more is written into them."""
    staging.mkdir()
    first: dict[str, Path] = {}
    dirs: list[tuple[Entry, Path]] = []
    for n, e in enumerate(entries, 1):
        dest = _fs_path(staging, e.path)
        try:
            _make(content, e, dest, first)
            if e.type == "dir":
                dirs.append((e, dest))
            else:
                _attributes(e, dest)
        except (OSError, ValueError) as err:
            raise MaterializeError(f"{e.path}: cannot stage it in {staging}: {err}") from None
        if n % PROGRESS_EVERY == 0:
            _say(progress, f"staged {n}/{len(entries)} entries")
    for e, dest in reversed(dirs):
        _attributes(e, dest)


def _run(cmd: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None) -> tuple[str, str]:
    """(stdout, stderr) of a command that must succeed."""
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, env=env, check=False)
    except FileNotFoundError:
        raise MaterializeError(f"{cmd[0]} is not installed: install e2fsprogs (`make bootstrap`)") from None
    err = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise MaterializeError(f"{' '.join(cmd[:2])} ... failed (exit {done.returncode}): {err.strip()[-2000:]}")
    return done.stdout.decode(errors="replace"), err


def make_ext4(staging: Path, image: Path, size: int, *, inodes: int, digest: str) -> None:
    """`mke2fs -t ext4 -d staging` into the new file `image` of `size` bytes, reproducibly."""
    hexd = digest.removeprefix("sha256:")
    conf = image.with_name(image.name + ".conf")
    conf.write_text(MKE2FS_CONF)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FIXED_TIME), MKE2FS_CONFIG=str(conf))
    env.pop("MKE2FS_DEVICE_SECTSIZE", None)
    env.pop("MKE2FS_FIRST_META_BG", None)
    try:
        with image.open("xb") as f:
            f.truncate(size)
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-N", str(inodes),
              "-m", "0", "-L", "softudc", "-U", str(uuid.UUID(hexd[:32])),
              "-E", f"hash_seed={uuid.UUID(hexd[32:])},lazy_itable_init=0,lazy_journal_init=0,nodiscard",
              "-d", str(staging), str(image)], env=env)
    finally:
        conf.unlink(missing_ok=True)


def _used_inodes(image: Path) -> int:
    counts = {}
    for line in _run(["dumpe2fs", "-h", str(image)])[0].splitlines():
        key, _, value = line.partition(":")
        if key in ("Inode count", "Free inodes"):
            counts[key] = int(value)
    return counts["Inode count"] - counts["Free inodes"]


def _quote(path: str) -> str:
    if any(c in path for c in '"\n\\'):
        raise MaterializeError(f"{path}: debugfs cannot name this path (a quote, backslash or newline in it)")
    return f'"{path}"'


def fix_inodes(image: Path, entries: list[Entry]) -> None:
    """What mke2fs -d does not carry over (see the module docstring), in one debugfs -w run."""
    cmds = [f"sif <{ino}> {field} @{FIXED_TIME}" for ino in [2, *range(11, _used_inodes(image) + 1)]
            for field in ("atime", "ctime")]
    xattr_files: list[Path] = []
    for e in entries:
        if e.path not in ("/", "/lost+found") or e.type != "dir":
            continue
        where = _quote(e.path)
        cmds += [f"sif {where} mode 0{0o40000 | e.mode:o}", f"sif {where} uid {e.uid}", f"sif {where} gid {e.gid}"]
        for name, value in e.xattrs:
            f = image.with_name(f"{image.name}.xattr{len(xattr_files)}")
            f.write_bytes(base64.b64decode(value))
            xattr_files.append(f)
            cmds.append(f"ea_set -f {f} {where} {name}")
    try:
        env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FIXED_TIME))
        _, said = _run(["debugfs", "-w", "-f", "-", str(image)], env=env, stdin="\n".join(cmds).encode() + b"\n")
    finally:
        for f in xattr_files:
            f.unlink(missing_ok=True)
    # debugfs goes on after a failed command and still exits 0: its complaints are on stderr.
    errors = [line for line in said.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if errors:
        raise MaterializeError(f"debugfs could not fix {image}: {errors[:3]}")
