"""A volume made as a copy of its VM's image (`from: image`, issue 13 item 2).

The storage host keeps the images it can copy in its pool's ``images/`` directory:
``<pool_dir>/images/<image>.qcow2`` (qcow2) or ``<image>.img`` (raw, as
``softudc image materialize IMAGE -o FILE`` makes it). The volume is a full copy, made with
``qemu-img convert -O qcow2`` (sparse: unallocated areas stay unallocated), then
``qemu-img resize`` up to the volume's size. So the volume is a self-contained pool file like any
other: it moves, mirrors, snapshots and is deleted without the image (a qcow2 clone backed by a file
outside the pool would tie it to this host's image file forever).

The copy is made under a temporary name and renamed into place when whole: the converger takes
any ``<name>.qcow2`` in the pool for a made volume, so a half-made one must never carry that name.
An image larger than the volume is refused (the message says which size to ask for); nothing is
left in the pool then.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from gatekeeper.volumes.pool import THIN_HEADROOM, Pool, Volume, VolumeError, _qemu_img

log = logging.getLogger("gatekeeper.volumes")
IMAGES_DIR = "images"  # under the pool directory
FORMATS = (("qcow2", "qcow2"), ("img", "raw"), ("raw", "raw"))  # file suffix -> qemu-img format
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")  # softudc/model/hoststate.py ImageName
MIB = 1 << 20


def image_file(pool: Pool, image: str) -> tuple[Path, str]:
    """The image's file in the pool's images directory and its format (raw or qcow2)."""
    if not IMAGE_RE.match(image) or ".." in image:
        raise VolumeError(f"image name {image!r}: use 1-128 of A-Z a-z 0-9 _ . : + - (starting with a letter or digit)")
    directory = pool.directory / IMAGES_DIR
    for suffix, fmt in FORMATS:
        path = directory / f"{image}.{suffix}"
        if path.is_file():
            return path, fmt
    raise VolumeError(f"image {image} is not on this storage host: put it in {directory} as {image}.qcow2 or "
                      f"{image}.img (raw; `softudc image materialize {image} -o {image}.img` makes one)")


def image_size(path: Path, fmt: str) -> int:
    """The image's virtual size (bytes), as qemu-img reads it in its declared format."""
    raw = json.loads(_qemu_img("info", "-U", "-f", fmt, "--output=json", str(path)))
    return int(raw["virtual-size"])


def create(pool: Pool, name: str, size_bytes: int, image: str) -> Volume:
    """Volume `name` of `size_bytes`, holding a copy of `image` (grown to the size)."""
    final = pool.path(name)
    if final.exists():
        raise VolumeError(f"volume {name} already exists in {pool.directory}; delete it first or pick another name")
    path, fmt = image_file(pool, image)
    have = image_size(path, fmt)
    if have > size_bytes:
        raise VolumeError(f"volume {name}: image {image} ({path}) is {have} bytes, more than the volume's size "
                          f"{size_bytes}; set the volume's `size` in the farm descriptor (vms[].volumes[].size) "
                          f"to at least {-(-have // MIB)}Mi")
    need = min(size_bytes, THIN_HEADROOM) if pool.thin else size_bytes
    if need > pool.free_bytes():
        raise VolumeError(f"volume {name}: {size_bytes} bytes do not fit; the pool has {pool.free_bytes()} free")
    tmp = pool.directory / f".{final.name}.{os.getpid()}.tmp"  # not *.qcow2: no volume until renamed
    started = time.monotonic()
    try:
        _qemu_img("convert", "-q", "-f", fmt, "-O", "qcow2", str(path), str(tmp))
        if have < size_bytes:
            _qemu_img("resize", "-q", "-f", "qcow2", str(tmp), str(size_bytes))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("volume %s: copied image %s (%d MiB) in %.1f s", name, image, have // MIB, time.monotonic() - started)
    return pool.info(name)
