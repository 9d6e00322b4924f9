"""A host's storage pool: one directory of qcow2 volumes (``<name>.qcow2``), with a capacity.

Volumes are made and inspected with qemu-img (the QEMU block layer, no home-made format):
``qemu-img create -f qcow2 [-b BACKING -F qcow2]`` and ``qemu-img info -U --output=json``
(``-U``: read even while qemu-storage-daemon holds the image's lock).
Capacity: the configured size, or the filesystem's; free = capacity minus what volumes could
grow to (their virtual sizes: a pool never promises more than it has), bounded by the
filesystem's free space. A thin pool (`thin=True`) counts what volumes hold on disk instead: it
can hold sparse masters larger than itself, and the operator watches its allocation.

Clones are qcow2 files whose backing file is another pool volume (a master, or a clone: chains
work), made in constant time whatever the backing's size. Snapshots are internal qcow2
snapshots (`qemu-img snapshot -c`, or QMP blockdev-snapshot-internal-sync while exported).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,126}$")  # a farm volume's id: <farm>--<instance>--<volume>
MAX_SIZE = 1 << 50  # 1 PiB: far above any lab, below qcow2's limits
QCOW2_MAGIC = b"QFI\xfb"
THIN_HEADROOM = 1 << 20  # a thin pool takes a new volume while it has this much free


class VolumeError(ValueError):
    """A volume request refused (the message names the volume and what to do); nothing changed."""


@dataclass(frozen=True)
class Volume:
    name: str
    size_bytes: int  # virtual size
    allocated_bytes: int  # on disk
    backing: str | None
    snapshots: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size_bytes": self.size_bytes, "allocated_bytes": self.allocated_bytes,
                "backing": self.backing, "snapshots": list(self.snapshots)}


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise VolumeError(f"volume name {name!r}: use 1-127 of a-z 0-9 _ . - (starting with a letter or digit)")
    return name


def _qemu_img(*args: str) -> str:
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VolumeError(f"qemu-img {args[0]}: {e}") from None
    if done.returncode != 0:
        raise VolumeError(f"qemu-img {args[0]}: {done.stderr.strip() or done.returncode}")
    return done.stdout


class Pool:
    def __init__(self, directory: Path, capacity_bytes: int | None = None, thin: bool = False) -> None:
        self.directory = directory
        self.capacity_limit = capacity_bytes
        self.thin = thin
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}.qcow2"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def create(self, name: str, size_bytes: int | None, backing: str | None = None) -> Volume:
        """A new qcow2 volume; with `backing`, a copy-on-write clone of that pool volume (size
        None: the backing's)."""
        path = self.path(name)
        if size_bytes is None and backing is not None and self.exists(backing):
            size_bytes = self.info(backing).size_bytes
        if path.exists():
            raise VolumeError(f"volume {name} already exists in {self.directory}; delete it first or pick another name")
        if type(size_bytes) is not int or not 0 < size_bytes <= MAX_SIZE:
            raise VolumeError(f"volume {name}: size_bytes {size_bytes!r} must be an integer in 1..{MAX_SIZE}")
        args = ["create", "-q", "-f", "qcow2"]
        if backing is not None:
            if not self.exists(backing):
                raise VolumeError(f"volume {name}: backing volume {backing} is not in this pool")
            args += ["-b", self.path(backing).name, "-F", "qcow2"]  # relative: the pool dir may move
        need = min(size_bytes, THIN_HEADROOM) if self.thin else size_bytes  # thin: its metadata, then what it writes
        if need > self.free_bytes():
            raise VolumeError(f"volume {name}: {size_bytes} bytes do not fit; the pool has {self.free_bytes()} free")
        _qemu_img(*args, str(path), str(size_bytes))
        return self.info(name)

    def info(self, name: str) -> Volume:
        path = self.path(name)
        if not path.exists():
            raise VolumeError(f"no volume {name} in {self.directory}")
        raw = json.loads(_qemu_img("info", "-U", "--output=json", str(path)))
        snaps = tuple(str(s["name"]) for s in raw.get("snapshots", []))
        return Volume(name, int(raw["virtual-size"]), int(raw.get("actual-size", 0)), raw.get("backing-filename"),
                      snaps)

    def snapshot(self, name: str, snapshot: str) -> Volume:
        """An internal snapshot of a volume no daemon holds (an exported one: Exports.snapshot)."""
        check_name(snapshot)
        if snapshot in self.info(name).snapshots:
            raise VolumeError(f"volume {name} already has a snapshot {snapshot}; pick another name")
        _qemu_img("snapshot", "-c", snapshot, str(self.path(name)))
        return self.info(name)

    def volumes(self) -> list[Volume]:
        out = []
        for p in sorted(self.directory.glob("*.qcow2")):
            try:
                out.append(self.info(p.name.removesuffix(".qcow2")))
            except VolumeError:
                if p.exists():  # else deleted while listing (the converger drops volumes meanwhile)
                    raise
        return out

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not path.exists():
            raise VolumeError(f"no volume {name} in {self.directory}")
        users = [v.name for v in self.volumes() if v.backing == path.name]
        if users:
            raise VolumeError(f"volume {name} is the backing file of {', '.join(users)}; delete those first")
        path.unlink()

    def _virtual_size(self, path: Path) -> int:
        """The qcow2 header's size field (big-endian u64 at byte 24, after the magic QFI\\xfb):
        no qemu-img process per volume, so creating a volume costs the same in a full pool."""
        with open(path, "rb") as f:
            head = f.read(32)
        if len(head) == 32 and head[:4] == QCOW2_MAGIC:
            return int.from_bytes(head[24:32], "big")
        return self.info(path.name.removesuffix(".qcow2")).size_bytes  # not a qcow2 header: ask qemu-img

    def capacity_bytes(self) -> int:
        st = os.statvfs(self.directory)
        fs = st.f_blocks * st.f_frsize
        return min(fs, self.capacity_limit) if self.capacity_limit else fs

    def free_bytes(self) -> int:
        st = os.statvfs(self.directory)
        files = list(self.directory.glob("*.qcow2"))
        promised = sum(f.stat().st_blocks * 512 if self.thin else self._virtual_size(f) for f in files)
        return max(0, min(self.capacity_bytes() - promised, st.f_bavail * st.f_frsize))
