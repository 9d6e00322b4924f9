"""Finding paths in a manifest as the image's own system would: following symlinks inside the
image (a Debian bookworm tree has /lib -> usr/lib and /etc/os-release -> ../usr/lib/os-release),
never outside it — an absolute target is taken from the image's root, like a chroot does."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping

from softudc.images.manifest import Entry

MAX_HOPS = 40  # Linux's limit on symlinks followed in one lookup (MAXSYMLINKS)


def _normal(path: str) -> str:
    """An absolute normalised path; ".." stops at the root as it does in a chroot."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return "/" + "/".join(out)


def resolve(index: Mapping[str, Entry], path: str, *, follow_last: bool = True) -> Entry | None:
    """The entry `path` names inside the image, symlinks followed (the last one too unless
    follow_last is False); None if it does not exist or the links loop."""
    hops = 0
    parts = [p for p in path.split("/") if p]
    at = "/"
    while parts:
        part = parts.pop(0)
        nxt = _normal(posixpath.join(at, part))
        e = index.get(nxt)
        if e is None:
            return None
        if e.type == "symlink" and (parts or follow_last):
            hops += 1
            if hops > MAX_HOPS:
                return None
            target = e.target if e.target.startswith("/") else posixpath.join(at, e.target)
            parts = [p for p in _normal(target).split("/") if p] + parts
            at = "/"
            continue
        at = nxt
    return index.get(at)


def children(entries: Iterable[Entry], directory: str) -> list[Entry]:
    """The entries right inside `directory` (an exact, already resolved path)."""
    prefix = directory.rstrip("/") + "/"
    n = len(prefix)
    return [e for e in entries if len(e.path) > n and e.path.startswith(prefix) and "/" not in e.path[n:]]


def top_dir(path: str) -> str:
    """"/usr" for "/usr/bin/ls", "/" for the root and for files right under it."""
    parts = path.split("/", 2)
    return "/" + parts[1] if len(parts) > 2 else "/"
