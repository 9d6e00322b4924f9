"""Garbage collection of the content store: mark every object a tagged version (or a version a
VM still runs from) needs, sweep the rest.

What stays: the manifest of every version a tag points at, or whose digest the caller passes in
`keep` (the manager passes the versions its VMs use), and every object (whole file or chunk)
those manifests name. Provenance does not keep anything alive: an untagged parent's content goes,
its version row stays, so `softudc image history` still shows where a version came from.

It never blocks an import and holds no lock: an object younger than the mark (its mtime newer
than the GC's start or the oldest live writer's lease, leases.py) is never swept, and every
writer touches the objects it reuses. A sweep renames an object aside, looks at its mtime once
more (a writer may have reused it between the mark and the rename) and only then deletes it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from softudc.images.content import ContentStore, IntegrityError
from softudc.images.leases import oldest_live
from softudc.images.manifest import ManifestError, parse_manifest
from softudc.images.store import ImageStore

SLACK = 2.0  # seconds: file mtimes come from a coarser clock than time.time()
ASIDE = ".gc-"  # an object being swept: .<hex>.zst.gc-<random>
STALE_ASIDE = 60.0
Progress = Callable[[str], None]


class GcError(Exception):
    """The mark could not be completed (an unreadable manifest); nothing was removed."""


@dataclass
class GcReport:
    dry_run: bool
    roots: int           # versions whose content is kept
    kept_objects: int
    kept_bytes: int
    swept_objects: int   # removed (or, with dry_run, that would be)
    swept_bytes: int
    young_objects: int   # unreferenced but written after the mark began (an import in progress)
    swept_disks: int = 0       # cached disk images (materialize's ROOT/disks/) of versions not kept
    swept_disk_bytes: int = 0  # the blocks they took (they are sparse)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def live_objects(store: ImageStore, roots: Iterable[str]) -> set[str]:
    """Every object the versions `roots` (digests) need: their manifests and contents."""
    live: set[str] = set()
    for digest in sorted(set(roots)):
        try:
            entries = parse_manifest(store.content.get(digest), source=f"manifest {digest}", expect=digest)
        except (IntegrityError, ManifestError) as e:
            raise GcError(f"cannot read a manifest to keep ({e}); nothing was removed: run "
                          "`softudc image verify` and re-import the image it names") from None
        live.add(digest)
        for entry in entries:
            if entry.type == "file":
                live.update(entry.chunks or (entry.digest,))
    return live


def _sweep(path: Path, cutoff: float) -> bool:
    """Removes the object at `path` unless a writer touched it after `cutoff`."""
    aside = path.with_name(f".{path.name}{ASIDE}{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
        if aside.stat().st_mtime >= cutoff:  # reused by a writer since the mark: put it back
            os.replace(aside, path)
            return False
        aside.unlink()
    except FileNotFoundError:  # another GC got there first
        return False
    return True


def _restore_asides(content: ContentStore, now: float) -> None:
    """An object a GC renamed aside before it died is put back: whether it was still needed is
    not known (the next GC decides again)."""
    for aside in content.objects_dir.glob(f"*/.*{ASIDE}*"):
        try:
            if aside.stat().st_ctime < now - STALE_ASIDE:  # the rename set ctime; a live GC takes microseconds
                os.replace(aside, aside.with_name(aside.name[1:aside.name.index(ASIDE)]))
        except FileNotFoundError:
            continue


def _leftovers(content: ContentStore, cutoff: float) -> None:
    """Temporary files of writers that died before their rename."""
    for tmp in content.objects_dir.glob("*/.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except FileNotFoundError:
            continue


def _disks(store: ImageStore, roots: set[str], cutoff: float, report: GcReport) -> None:
    """Cached disk images (ROOT/disks/<hex>[-SIZE].img) of versions no longer kept: they can be
    made again from a kept version, and are large. A VM's disk is kept through `keep`."""
    for disk in sorted((store.root / "disks").glob("[0-9a-f]*.img")):
        try:
            st = disk.stat()
        except FileNotFoundError:
            continue
        if "sha256:" + disk.name[:64] in roots or st.st_mtime >= cutoff:
            continue
        if not report.dry_run:
            disk.unlink(missing_ok=True)
        report.swept_disks += 1
        report.swept_disk_bytes += st.st_blocks * 512


def collect(store: ImageStore, *, keep: Iterable[str] = (), dry_run: bool = False,
            progress: Progress | None = None, clock: Callable[[], float] = time.time) -> GcReport:
    """Sweeps every object no tagged version and no version in `keep` needs (see the module
    docstring). With `dry_run`, only counts what would go."""
    say = progress or (lambda _: None)
    start = clock()
    leased = oldest_live(store.content.leases_dir)
    cutoff = min(start, leased if leased is not None else start) - SLACK
    _restore_asides(store.content, start)
    roots = set(store.tags().values()) | set(keep)
    say(f"gc: marking from {len(roots)} versions")
    live = live_objects(store, roots)
    report = GcReport(dry_run, len(roots), 0, 0, 0, 0, 0)
    for n, (digest, size) in enumerate(store.content.objects(), start=1):
        if n % 10000 == 0:
            say(f"gc: {n} objects looked at, {report.swept_objects} unreferenced")
        path = store.content.path_of(digest)
        if digest in live:
            report.kept_objects += 1
            report.kept_bytes += size
            continue
        try:
            young = path.stat().st_mtime >= cutoff
        except FileNotFoundError:
            continue
        if young or not (dry_run or _sweep(path, cutoff)):
            report.young_objects += 1
            continue
        report.swept_objects += 1
        report.swept_bytes += size
    _disks(store, roots, cutoff, report)
    if not dry_run:
        _leftovers(store.content, cutoff)
    verb = "would remove" if dry_run else "removed"
    say(f"gc: {verb} {report.swept_objects} objects ({report.swept_bytes} bytes), kept {report.kept_objects}"
        + (f"; {verb} {report.swept_disks} cached disks" if report.swept_disks else ""))
    return report
