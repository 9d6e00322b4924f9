"""The content store shared by every image: each distinct file content (or chunk of a big file)
once, zstd-compressed, named by the SHA-256 of its uncompressed bytes.

    ROOT/objects/ab/<64 hex>.zst    the object sha256:ab<62 more hex>
    ROOT/leases/                    writers' leases (leases.py), so a GC never sweeps their objects

An object is written to a temporary file beside its final name, fsync'ed and renamed, so a
reader or a crash never sees half of one; the directories are fsync'ed in a batch by `sync`
(ImageStore.commit calls it before it records a version). Storing content that is already there
writes nothing, it only touches the object's mtime (a GC running meanwhile then keeps it).

Files above CHUNK_OVER bytes are cut by FastCDC (content-defined chunking) into pieces of about
CHUNK_AVG bytes, each its own object: a small change to a big file re-stores only the chunks
around the change. The file's entry still carries the digest of its whole content.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import zstandard
from fastcdc import fastcdc  # type: ignore[import-untyped]

from softudc.atomicfile import fsync_dir, write_atomic
from softudc.images.leases import Lease
from softudc.images.manifest import Entry, digest_of, is_digest

CHUNK_OVER = 1 << 20
CHUNK_MIN, CHUNK_AVG, CHUNK_MAX = 16 << 10, 64 << 10, 256 << 10
WINDOW = 8 << 20  # how much of a big file is chunked at a time (memory stays bounded)
LEVEL = 3


class IntegrityError(Exception):
    """An object whose bytes do not hash to its name, or that cannot be read at all."""


class MissingObjectError(IntegrityError):
    """An object that is not in the store."""


def _read_full(src: IO[bytes], n: int) -> bytes:
    """Up to `n` bytes; fewer only at the end of `src` (pipes and tar members return short reads)."""
    parts: list[bytes] = []
    while n > 0 and (part := src.read(n)):
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _cut(buf: bytes, final: bool) -> tuple[list[bytes], bytes]:
    """FastCDC chunks of `buf`; unless `final`, the last one is handed back to be cut again with
    what follows (it may end only because `buf` does). Chunk boundaries depend only on the bytes
    from a chunk's start, so cutting window by window gives the chunks of the whole file."""
    view = memoryview(buf)
    pieces = [bytes(view[c.offset:c.offset + c.length])
              for c in fastcdc(view, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)]
    if final or not pieces:
        return pieces, b""
    return pieces[:-1], pieces[-1]


class ContentStore:
    """The objects under `root`; safe to share between processes (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects_dir = root / "objects"
        self.leases_dir = root / "leases"
        self._dirty: set[Path] = set()
        self._lease: Lease | None = None

    def path_of(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ValueError(f"{digest!r} is not an object name ('sha256:' and 64 lowercase hex digits)")
        hexd = digest[7:]
        return self.objects_dir / hexd[:2] / f"{hexd}.zst"

    # writing

    def touch(self, digest: str) -> bool:
        """Whether the object is stored; if so, it is marked as just used, under this writer's
        lease, so that a GC running meanwhile keeps it (leases.py)."""
        path = self.path_of(digest)
        if self._lease is None:
            self._lease = Lease(self.leases_dir)
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        except PermissionError:  # another user's object in a shared store: cannot mark it
            return path.is_file()
        return True

    def put(self, data: bytes) -> str:
        """Stores `data` (once) and returns its digest."""
        digest = digest_of(data)
        if self.touch(digest):  # already stored
            return digest
        path = self.path_of(digest)
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirty.add(path.parent.parent)
        blob = zstandard.ZstdCompressor(level=LEVEL).compress(data)
        write_atomic(path, blob, 0o644, sync_dir=False)  # directories: fsync'd together by sync()
        self._dirty.add(path.parent)
        return digest

    def put_file(self, src: Path | IO[bytes]) -> tuple[str, int, tuple[str, ...]]:
        """Stores a file's content: (digest of the whole, size, chunks); chunks is () when the
        content is one object (CHUNK_OVER bytes or fewer)."""
        if isinstance(src, Path):
            if not stat.S_ISREG(src.stat().st_mode):  # a device never ends, opening a fifo blocks
                raise ValueError(f"{src} is not a regular file: its content cannot be stored")
            with src.open("rb") as f:
                return self.put_file(f)
        head = _read_full(src, CHUNK_OVER + 1)
        if len(head) <= CHUNK_OVER:
            return self.put(head), len(head), ()
        whole = hashlib.sha256()
        chunks: list[str] = []
        size = 0
        carry, final = head, False
        while not final:
            want = WINDOW - len(carry)
            more = _read_full(src, want)
            final = len(more) < want
            pieces, carry = _cut(carry + more, final)
            for piece in pieces:
                whole.update(piece)
                size += len(piece)
                chunks.append(self.put(piece))
        return "sha256:" + whole.hexdigest(), size, tuple(chunks)

    def entry_for_file(self, path: str, src: Path | IO[bytes], *, mode: int, uid: int, gid: int,
                       xattrs: tuple[tuple[str, str], ...] = ()) -> Entry:
        """Stores a file's content and returns its manifest entry at `path`."""
        digest, size, chunks = self.put_file(src)
        return Entry(path, "file", mode & 0o7777, uid=uid, gid=gid, size=size, digest=digest,
                     chunks=chunks, xattrs=xattrs)

    def sync(self) -> None:
        """Makes the renames of the objects written so far durable (one fsync per directory)."""
        dirty, self._dirty = self._dirty, set()  # (another thread may be adding to it)
        for directory in sorted(dirty, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(directory)

    def release_lease(self) -> None:
        """The objects written so far are referenced by a committed version: a GC may judge them."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def move_aside(self, digest: str) -> Path:
        """Moves a corrupt object to ROOT/corrupt/ (kept for a human), so that storing its
        content again writes a good copy instead of reusing the bad one."""
        aside_dir = self.root / "corrupt"
        aside_dir.mkdir(exist_ok=True)
        aside = aside_dir / f"{digest[7:]}.{time.strftime('%Y%m%dT%H%M%S')}.zst"
        os.replace(self.path_of(digest), aside)
        return aside

    # reading

    def has(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    def get(self, digest: str) -> bytes:
        """One object's bytes, checked against its name (IntegrityError naming it if they differ)."""
        path = self.path_of(digest)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(f"object {digest} is missing ({path})") from None
        try:
            data = zstandard.ZstdDecompressor().decompress(blob)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"object {digest} is corrupt ({path}): cannot decompress: {e}") from None
        if digest_of(data) != digest:
            raise IntegrityError(f"object {digest} is corrupt ({path}): its content hashes to {digest_of(data)}")
        return data

    def _parts(self, e: Entry) -> Iterable[str]:
        if e.type != "file":
            raise ValueError(f"{e.path} is a {e.type}, not a file: it has no content")
        return e.chunks or (e.digest,)

    def stream(self, e: Entry) -> Iterator[bytes]:
        """A file entry's content piece by piece; IntegrityError (after the last piece at the
        latest) if it is not the content the entry names."""
        whole = hashlib.sha256()
        for part in self._parts(e):
            data = self.get(part)
            whole.update(data)
            yield data
        if e.chunks and "sha256:" + whole.hexdigest() != e.digest:
            raise IntegrityError(f"{e.path}: its chunks add up to sha256:{whole.hexdigest()}, not {e.digest}")

    def read(self, e: Entry) -> bytes:
        """A (small) file entry's whole content."""
        return b"".join(self.stream(e))

    def write_to(self, e: Entry, dest: Path) -> None:
        """A file entry's content into the new file `dest` (removed again on any error)."""
        with dest.open("xb") as f:
            try:
                for data in self.stream(e):
                    f.write(data)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise

    def objects(self) -> Iterator[tuple[str, int]]:
        """Every object: (digest, bytes it takes on disk)."""
        for sub in sorted(self.objects_dir.glob("[0-9a-f][0-9a-f]")):
            for path in sorted(sub.glob("*.zst")):
                try:
                    yield "sha256:" + path.name[:-4], path.stat().st_size
                except FileNotFoundError:
                    continue  # swept meanwhile

