"""A host's storage pool: one directory of qcow2 volumes (``<name>.qcow2``), with a capacity.

Volumes are made and inspected with qemu-img (the QEMU block layer, no home-made format):
``qemu-img create -f qcow2 [-b BACKING -F qcow2]`` and ``qemu-img info -U --output=json``
(``-U``: read even while qemu-storage-daemon holds the image's lock).
Capacity: the configured size, or the filesystem's; free = capacity minus what volumes could
grow to (their virtual sizes: a pool never promises more than it has), bounded by the
filesystem's free space.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MAX_SIZE = 1 << 50  # 1 PiB: far above any lab, below qcow2's limits


class VolumeError(ValueError):
    """A volume request refused (the message names the volume and what to do); nothing changed."""


@dataclass(frozen=True)
class Volume:
    name: str
    size_bytes: int  # virtual size
    allocated_bytes: int  # on disk
    backing: str | None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size_bytes": self.size_bytes, "allocated_bytes": self.allocated_bytes,
                "backing": self.backing}


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise VolumeError(f"volume name {name!r}: use 1-63 of a-z 0-9 _ . - (starting with a letter or digit)")
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
    def __init__(self, directory: Path, capacity_bytes: int | None = None) -> None:
        self.directory = directory
        self.capacity_limit = capacity_bytes
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}.qcow2"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def create(self, name: str, size_bytes: int, backing: str | None = None) -> Volume:
        """A new qcow2 volume; with `backing`, a copy-on-write clone of that pool volume."""
        path = self.path(name)
        if path.exists():
            raise VolumeError(f"volume {name} already exists in {self.directory}; delete it first or pick another name")
        if type(size_bytes) is not int or not 0 < size_bytes <= MAX_SIZE:
            raise VolumeError(f"volume {name}: size_bytes {size_bytes!r} must be an integer in 1..{MAX_SIZE}")
        args = ["create", "-q", "-f", "qcow2"]
        if backing is not None:
            if not self.exists(backing):
                raise VolumeError(f"volume {name}: backing volume {backing} is not in this pool")
            args += ["-b", self.path(backing).name, "-F", "qcow2"]  # relative: the pool dir may move
        if size_bytes > self.free_bytes():
            raise VolumeError(f"volume {name}: {size_bytes} bytes do not fit; the pool has {self.free_bytes()} free")
        _qemu_img(*args, str(path), str(size_bytes))
        return self.info(name)

    def info(self, name: str) -> Volume:
        path = self.path(name)
        if not path.exists():
            raise VolumeError(f"no volume {name} in {self.directory}")
        raw = json.loads(_qemu_img("info", "-U", "--output=json", str(path)))
        return Volume(name, int(raw["virtual-size"]), int(raw.get("actual-size", 0)), raw.get("backing-filename"))

    def volumes(self) -> list[Volume]:
        return [self.info(p.name.removesuffix(".qcow2")) for p in sorted(self.directory.glob("*.qcow2"))]

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not path.exists():
            raise VolumeError(f"no volume {name} in {self.directory}")
        users = [v.name for v in self.volumes() if v.backing == path.name]
        if users:
            raise VolumeError(f"volume {name} is the backing file of {', '.join(users)}; delete those first")
        path.unlink()

    def capacity_bytes(self) -> int:
        st = os.statvfs(self.directory)
        fs = st.f_blocks * st.f_frsize
        return min(fs, self.capacity_limit) if self.capacity_limit else fs

    def free_bytes(self) -> int:
        st = os.statvfs(self.directory)
        promised = sum(self.info(p.name.removesuffix(".qcow2")).size_bytes for p in self.directory.glob("*.qcow2"))
        return max(0, min(self.capacity_bytes() - promised, st.f_bavail * st.f_frsize))
