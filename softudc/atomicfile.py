"""Writing state and secret files so that a crash, a power loss or a concurrent reader never sees
half of one, and no other user ever sees a secret.

`write_atomic` is the one way the manager, the PKI and the gatekeeper write a state or secret
file: the data goes to a fresh temporary file in the same directory (created 0600 with O_EXCL, so
it is never readable by others, not even for an instant), is fsync'ed, renamed over the target
(rename(2) is atomic: readers see the old file or the new one), and the directory is fsync'ed so
the rename itself survives a power loss. `create_exclusive` is for files that must not exist yet
(private keys): O_EXCL|0600 from the first byte, never "write, then chmod".

`locked` serialises read-modify-write cycles on one file across threads and processes (the lab
writes join tokens from another process than the manager's API threads).

`move_aside` keeps a corrupt file for a human to look at and lets the daemon start afresh.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PRIVATE = 0o600


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (POSIX needs the directory synced too)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never an existing one) with `mode` from its first byte, write and fsync
    `data`; on any error the half-written file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE, sync_dir: bool = True) -> None:
    """Replace `path` with `data`, all or nothing, durable once this returns. On any error (disk
    full included) the old file is left as it was and the temporary file is removed. `sync_dir`
    False: the caller fsyncs the directory itself (once for many files, as the image store does)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    _write_new(tmp, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    """Create `path` with `data`; FileExistsError if it exists (a key is never silently replaced).
    The file has `mode` from its first byte on; it is fsync'ed, and so is its directory."""
    _write_new(path, data, mode)
    fsync_dir(path.parent)


def private_dir(directory: Path) -> Path:
    """Create `directory` (and its parents) if needed and make it 0700: it holds secrets."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # an existing one, or a umask that narrowed mkdir's mode further
    return directory


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of `path`, across threads and processes.
    The lock lives on a separate `.lock` file: `path` itself is replaced by every write, and a
    lock on a replaced inode would protect nothing."""
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # each open() is its own lock: threads exclude each other too
        yield
    finally:
        os.close(fd)  # closing releases the lock


def move_aside(path: Path) -> Path:
    """Rename a corrupt `path` to `path.corrupt-<time>` (kept for inspection); returns the new name."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}")
    os.replace(path, aside)
    fsync_dir(path.parent)
    return aside
