"""Write leases: how a garbage collection and concurrent imports share a store without a lock.

A writer (an import, a build, a patch) takes a lease before its first object and drops it once its
version is committed. A lease is a file under `leases/` named for the time it began, held with an
exclusive flock for as long as the writer lives. A GC never sweeps an object whose mtime is newer
than the oldest live lease (or its own start): every object such a writer stored or reused
(`ContentStore.put` touches an object it finds already there) is then safe until the writer's
manifest refers to it. A crashed writer's flock goes with its process, so its lease is stale and
the next GC removes it. Nobody ever waits: the GC only tries the locks (LOCK_NB).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from pathlib import Path


class Lease:
    """One writer's lease; `release` ends it (closing the process ends it too)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.began = time.time()
        name = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = directory / name
        # Locked under a hidden name first, so that a GC never finds it unlocked and removes it.
        hidden = directory / f".{name}"
        self._fd: int | None = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(hidden, self.path)

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _began(path: Path) -> float | None:
    try:
        return int(path.name.split("-", 1)[0]) / 1e9
    except ValueError:
        return None


def oldest_live(directory: Path) -> float | None:
    """The start time of the oldest lease still held, or None; stale leases are removed."""
    oldest: float | None = None
    for path in directory.glob("[0-9]*") if directory.is_dir() else ():
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            began = _began(path)
            if began is not None and (oldest is None or began < oldest):
                oldest = began
        else:
            path.unlink(missing_ok=True)  # nobody holds it: its writer is gone
        finally:
            os.close(fd)
    return oldest
