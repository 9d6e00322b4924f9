"""External snapshots of pool volumes (issue 13 item 3): the frozen state becomes a pool volume
of its own, which clones use as their backing file, while the volume goes on in an overlay.

A snapshot `S` of volume `V` is the pool file `V.snap.S.qcow2` (`snapshot_file`): the bytes `V`
held when it was taken, never written again. Taking it:

1. `qemu-img create -f qcow2 -u -b V.snap.S.qcow2 -F qcow2 .V.overlay SIZE`: an empty overlay
   over the name the frozen file will have (relative, as every pool clone; `-u`: not opened);
2. hard-link `V.qcow2` as `V.snap.S.qcow2` (the file an export's daemon has open: same inode),
   then rename the overlay to `V.qcow2` (atomic: a pool listing never misses the volume);
3. if `V` is exported: in its qemu-storage-daemon, `blockdev-add` the new overlay (no backing yet)
   and QMP `blockdev-snapshot {node: <the export's node>, overlay: <it>}`: QEMU drains and flushes
   the old top, links it under the overlay and moves the export onto the overlay. A write the
   guest saw completed before is in the snapshot; later ones go to the overlay. The export goes on
   (its clients do not reconnect).

Every step is undone if a later one fails (the volume is as it was). The chain grows by one per
snapshot: `flatten` copies the backing chain's data into the volume (QMP `block-stream` while
exported, a background job whose progress `flatten_progress` reads; `qemu-img rebase -b ''`
otherwise) so it no longer depends on its snapshots (they stay, for their clones).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gatekeeper.volumes.pool import VolumeError, _qemu_img, check_name
from gatekeeper.volumes.service import VolumeService
from softudc.model.hoststate import DesiredVolume

log = logging.getLogger("gatekeeper.volumes")
SNAP_INFIX = ".snap."
A = TypeVar("A")


def snapshot_file(volume: str, snapshot: str) -> str:
    """The pool volume holding snapshot `snapshot` of `volume` (softudc/model/volume.py backing_name)."""
    return check_name(f"{check_name(volume)}{SNAP_INFIX}{check_name(snapshot)}")


def _node(name: str) -> str:
    """A QMP node name for an overlay (<= 31 characters, starting with a letter)."""
    return "ov" + hashlib.sha256(name.encode()).hexdigest()[:20]


def encrypted(path: Path) -> bool:
    """The qcow2 header's crypt_method (big-endian u32 at byte 32) is not 0 (AES or LUKS)."""
    with open(path, "rb") as f:
        head = f.read(36)
    return len(head) == 36 and int.from_bytes(head[32:36], "big") != 0


def export_node(service: VolumeService, volume: str) -> str:
    """The node the volume's export serves now (vol0, or the overlay of its last snapshot)."""
    with service.exports.daemon(volume).qmp() as q:
        for e in q.execute("query-block-exports"):
            if e.get("id") == volume:
                return str(e["node-name"])
    raise VolumeError(f"volume {volume}: its daemon has no export {volume}; unexport and export it again")


def take(service: VolumeService, volume: str, frozen: str) -> dict[str, Any]:
    """Freeze `volume`'s current state into the new pool volume `frozen` (see the module text);
    the volume goes on in an overlay over it. Its description afterwards."""
    pool, exports = service.pool, service.exports
    src, dst = pool.path(volume), pool.path(frozen)
    if not src.exists():
        raise VolumeError(f"no volume {volume} in {pool.directory}")
    if dst.exists():
        raise VolumeError(f"volume {frozen} already exists in {pool.directory}; pick another snapshot name")
    exported = exports.exported(volume)
    if encrypted(src):
        raise VolumeError(f"volume {volume} is encrypted: its snapshots are not supported yet (the overlay "
                          "would need its LUKS options)")
    size = pool.info(volume).size_bytes
    top = export_node(service, volume) if exported else ""
    tmp = pool.directory / f".{volume}.overlay"  # not *.qcow2: no listing sees it half made
    _qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", dst.name, "-F", "qcow2", str(tmp), str(size))
    try:
        os.link(src, dst)  # the frozen name for the file as it is (the daemon's open file)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VolumeError(f"volume {volume}: snapshot {frozen}: {e}") from None
    os.rename(tmp, src)  # atomic: the volume's name is never missing from the pool
    try:
        if exported:
            _switch(service, volume, top, frozen)
    except Exception:
        os.rename(dst, src)  # the volume's name back on its file; the overlay is gone
        raise
    log.info("volume %s: snapshot %s taken (%s)", volume, frozen, "live" if exported else "offline")
    return service.describe(volume)


def _switch(service: VolumeService, volume: str, top: str, frozen: str) -> None:
    """The overlay's file as a node of its own (an inline one is reopened by its file name when it
    becomes a backing later, which after the rename is the next overlay's file), then its qcow2."""
    node = _node(frozen)
    with service.exports.daemon(volume).qmp() as q:
        q.execute("blockdev-add", **{"driver": "file", "node-name": "f" + node,
                                     "filename": str(service.pool.path(volume))})
        q.execute("blockdev-add", **{"driver": "qcow2", "node-name": node, "backing": None, "file": "f" + node})
        try:
            q.execute("blockdev-snapshot", node=top, overlay=node)
        except Exception:
            q.execute("blockdev-del", **{"node-name": node})
            q.execute("blockdev-del", **{"node-name": "f" + node})
            raise


def flatten(service: VolumeService, volume: str) -> str:
    """Copy the data of `volume`'s backing chain into it, so it has no backing file any more.
    Exported: a QMP block-stream job in its daemon (the guest goes on; `flatten_progress` follows
    it; 'started'); otherwise qemu-img rebase, done when this returns ('done')."""
    pool = service.pool
    if pool.info(volume).backing is None:
        return "done"
    if not service.exports.exported(volume):
        _qemu_img("rebase", "-q", "-f", "qcow2", "-b", "", str(pool.path(volume)))
        return "done"
    node = export_node(service, volume)
    with service.exports.daemon(volume).qmp() as q:
        if any(j.get("device") == f"flatten-{volume}"[:31] for j in q.execute("query-block-jobs")):
            return "started"
        q.execute("block-stream", **{"job-id": f"flatten-{volume}"[:31], "device": node})
    return "started"


def flatten_progress(service: VolumeService, volume: str) -> dict[str, int] | None:
    """A running flatten's {offset, len} bytes (QMP query-block-jobs), None when none runs."""
    if not service.exports.exported(volume):
        return None
    with service.exports.daemon(volume).qmp() as q:
        for j in q.execute("query-block-jobs"):
            if j.get("device") == f"flatten-{volume}"[:31]:
                return {"offset": int(j.get("offset", 0)), "len": int(j.get("len", 0))}
    return None


def actions(w: DesiredVolume, have: dict[str, dict[str, Any]],
            action: Callable[[str, str, dict[str, Any]], A]) -> list[A] | None:
    """The converger's actions (gatekeeper/volumes/converge.py, made by `action(op, name, args)`)
    for a wanted volume that is dropped or a snapshot not taken yet; None for any other (the
    converger's own: create, export, allow, flatten). A snapshot is taken once: while its file
    is not in the pool."""
    if w.drop:
        out = [action("unexport", w.name, {})] if "allowed" in have.get(w.name, {}) else []
        return out + ([action("delete", w.name, {})] if w.name in have else []) + [action("forget", w.name, {})]
    if w.snapshot_of and w.name not in have:
        return [action("snapshot", w.name, {"of": w.snapshot_of})]
    return None


def apply(service: VolumeService, op: str, name: str, args: dict[str, Any]) -> None:
    """Carry out a `snapshot` or `flatten` action (see `actions`)."""
    if op == "snapshot":
        take(service, args["of"], name)
    else:
        state = flatten(service, name)
        if state == "started":
            log.info("volume %s: flattening, %s", name, flatten_progress(service, name))
