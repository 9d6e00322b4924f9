"""A VM's volumes in the Farm descriptor (issue 13 item 2), checked like the rest of it:

    vms:
      - name: db
        replicas: 2
        volumes:
          - {name: data, size: 10Gi, class: remote, from: empty, keep: true}
          - {name: root, size: 2Gi, class: local, from: image}       # a copy of the VM's image
          - {name: ref, size: 1Gi, from: pg-master}                   # a copy-on-write clone of a master
          - {name: fork, size: 1Gi, from: gold@v1}                    # ... of snapshot v1 of volume gold

Each instance gets its own volumes, named `<farm>--<vm>-<replica>--<volume>` (volume_id). `class`
is `local` (on the VM's host, default) or `remote` (on a host with free pool capacity, served to
the VM's host over NBD+TLS); `from` is `empty` (default), `image` or the name of a registered master
volume; `keep: true` leaves the volume when the farm is deleted.

`encrypted: true` (an attribute, with `class: remote`): the qcow2 is LUKS-encrypted
(`encrypt.format=luks`) with a key the manager makes and keeps (softudc/manager/volume_keys.py);
the storage host's qemu-storage-daemon gets it as a QMP `secret` object and serves the volume
decrypted over NBD+TLS only. `iops` / `mbps`: QoS limits of the VM's disk (libvirt `<iotune>`
total_iops_sec / total_bytes_sec), so a noisy volume cannot starve its neighbours.
`migrate: refuse | copy` (local volumes only, default refuse): whether the VM may migrate, its
volume copied along (softudc/manager/volume_migration.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from softudc.model.hoststate import SEPARATOR
from softudc.model.source import Mark, Node

CLASSES = ("local", "remote", "mirrored")
EMPTY, IMAGE = "empty", "image"
SNAP_INFIX = ".snap."  # snapshot S of volume V is the pool volume V.snap.S (gatekeeper/volumes/snapshots.py)
REF_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,126}$")  # a pool volume's name (gatekeeper/volumes/pool.py)
MAX_VOLUMES = 8  # per VM
MIN_SIZE, MAX_SIZE = 1 << 20, 64 << 40  # 1 MiB .. 64 TiB
UNITS = {"Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
FIELDS = {"name", "size", "class", "from", "keep", "encrypted", "iops", "mbps", "migrate"}
MIGRATE = ("refuse", "copy")  # a local volume when its VM migrates (softudc/manager/volume_migration.py)
MAX_IOPS, MAX_MBPS = 1_000_000, 100_000  # QoS limits: 1..these
WRONG = 0  # a QoS limit that was refused (reported at its line)


@dataclass(frozen=True)
class VolumeDef:
    name: str
    size_bytes: int
    cls: str = "local"
    source: str = EMPTY  # empty | image | a master volume's name | VOLUME@SNAPSHOT
    keep: bool = False
    encrypted: bool = False  # LUKS qcow2, key kept by the manager (class remote only)
    iops: int | None = None  # QoS: total I/O operations per second (libvirt iotune total_iops_sec)
    mbps: int | None = None  # QoS: total MB/s (10^6 bytes; iotune total_bytes_sec)
    migrate: str = "refuse"  # local: refuse the VM's migration, or copy the volume along (live only)

    @property
    def master(self) -> str | None:
        """The master volume it is cloned from, if any."""
        return None if self.source in (EMPTY, IMAGE) else self.source


def volume_id(farm: str, instance: str, volume: str) -> str:
    """The volume's name on its storage host: unique in the cluster, parsed back by split_volume_id."""
    return f"{farm}{SEPARATOR}{instance}{SEPARATOR}{volume}"


def split_volume_id(vid: str) -> tuple[str, str, str] | None:
    parts = vid.split(SEPARATOR)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def parse_size_bytes(text: object) -> int | None:
    """'10Gi' -> bytes; None unless a whole number of Mi, Gi or Ti within MIN_SIZE..MAX_SIZE."""
    if not isinstance(text, str) or len(text) < 3 or text[-2:] not in UNITS or not text[:-2].isdigit():
        return None
    size = int(text[:-2]) * UNITS[text[-2:]]
    return size if MIN_SIZE <= size <= MAX_SIZE else None


class Checks(Protocol):
    """What the descriptor's checker offers (softudc.model.farm._Checker)."""

    def fail(self, mark: Mark, path: str, message: str) -> None: ...
    def mapping(self, node: Node, path: str, allowed: set[str], required: set[str]) -> dict[str, Node] | None: ...
    def seq(self, node: Node, path: str) -> list[Node]: ...
    def name(self, node: Node, path: str) -> str | None: ...
    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str | None: ...


def parse_volumes(c: Checks, node: Node, path: str) -> list[VolumeDef] | None:
    """A VM's `volumes` list; None when any item is wrong (each reported at its line)."""
    items = c.seq(node, path)
    if len(items) > MAX_VOLUMES:
        c.fail(node.mark, path, f"{len(items)} volumes, at most {MAX_VOLUMES} per VM")
        return None
    volumes = [_volume(c, item, f"{path}[{i}]") for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, (v, item) in enumerate(zip(volumes, items, strict=True)):
        if v is not None and v.name in seen:
            c.fail(item.mark, f"{path}[{i}].name",
                   f"duplicate volume name {v.name!r} (first at {path}[{seen[v.name]}])")
            return None
        if v is not None:
            seen[v.name] = i
    return None if None in volumes else [v for v in volumes if v is not None]


def _volume(c: Checks, node: Node, path: str) -> VolumeDef | None:
    m = c.mapping(node, path, FIELDS, {"name", "size"})
    if m is None:
        return None
    name = c.name(m["name"], f"{path}.name") if "name" in m else None
    size = parse_size_bytes(m["size"].value) if "size" in m else None
    if "size" in m and size is None:
        c.fail(m["size"].mark, f"{path}.size", f"{m['size'].value!r} is not a size from 1Mi to 64Ti "
                                               "(a whole number and Mi, Gi or Ti)")
    cls = c.choice(m["class"], f"{path}.class", CLASSES) if "class" in m else "local"
    source = _source(c, m["from"], f"{path}.from") if "from" in m else EMPTY
    keep, encrypted = _flag(c, m, "keep", path), _flag(c, m, "encrypted", path)
    iops, mbps = _limit(c, m, "iops", MAX_IOPS, path), _limit(c, m, "mbps", MAX_MBPS, path)
    migrate = _migrate(c, m, cls, path)
    if encrypted and cls is not None and cls != "remote":
        c.fail(m["encrypted"].mark, f"{path}.encrypted", "an encrypted volume must be `class: remote` (its "
               f"storage host's qemu-storage-daemon holds the key), not {cls}")
        return None
    if encrypted and source == IMAGE:  # gatekeeper/volumes/from_image.py copies into a plain qcow2
        c.fail(m["from"].mark, f"{path}.from", "an encrypted volume cannot start from the image (not supported "
               "yet); use `from: empty`, or leave `encrypted` out")
        return None
    if cls == "mirrored" and source not in (None, EMPTY):  # softudc/manager/volume_replicas.py
        c.fail(m["from"].mark, f"{path}.from", "a mirrored volume starts empty (its two replicas are made side "
               f"by side), not from {source}; use `class: remote` for a clone or an image")
        return None
    if name is None or size is None or cls is None or source is None or keep is None or encrypted is None \
            or iops == WRONG or mbps == WRONG or migrate is None:
        return None
    return VolumeDef(name, size, cls, source, keep, encrypted, iops or None, mbps or None, migrate)


def _migrate(c: Checks, m: dict[str, Node], cls: str | None, path: str) -> str | None:
    """`migrate: refuse | copy`, for a local volume only (a network volume stays where it is)."""
    if "migrate" not in m:
        return "refuse"
    migrate = c.choice(m["migrate"], f"{path}.migrate", MIGRATE)
    if migrate is not None and cls is not None and cls != "local":
        c.fail(m["migrate"].mark, f"{path}.migrate", f"migrate applies to local volumes; a {cls} volume is "
               "reached over the network wherever its VM runs (leave migrate out)")
        return None
    return migrate


def _flag(c: Checks, m: dict[str, Node], key: str, path: str) -> bool | None:
    value = m[key].value if key in m else False
    if not isinstance(value, bool):
        c.fail(m[key].mark, f"{path}.{key}", f"{value!r} must be true or false")
        return None
    return value


def _limit(c: Checks, m: dict[str, Node], key: str, most: int, path: str) -> int | None:
    """A QoS limit: None when absent, WRONG (0) when wrong (reported)."""
    if key not in m:
        return None
    value = m[key].value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        c.fail(m[key].mark, f"{path}.{key}", f"{value!r} must be a whole number from 1 to {most}")
        return WRONG
    return value


def _source(c: Checks, node: Node, path: str) -> str | None:
    if node.value in (EMPTY, IMAGE):
        return str(node.value)
    if isinstance(node.value, str) and "@" in node.value:  # a snapshot: VOLUME@SNAPSHOT
        volume, _, snap = node.value.partition("@")
        if not REF_RE.match(volume) or not REF_RE.match(snap) or "@" in snap:
            c.fail(node.mark, path, f"{node.value!r} is not VOLUME@SNAPSHOT (`softudc volume list` names them)")
            return None
        return node.value
    if isinstance(node.value, str) and split_volume_id(node.value) is not None:
        c.fail(node.mark, path, f"{node.value!r} is a farm's volume: clone a snapshot of it ({node.value}@SNAPSHOT, "
                                "`softudc volume snapshot` first)")
        return None
    return c.name(node, path)  # a master volume's name (`softudc volume create --master`)


IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")  # hoststate.ImageName: a file name on the host


def check_image_source(c: Checks, node: Node, path: str, volumes: list[VolumeDef] | None) -> bool:
    """A VM with a volume `from: image` needs an image name the storage host can find as a file."""
    if not any(v.source == IMAGE for v in volumes or []) or not isinstance(node.value, str):
        return True
    if IMAGE_RE.match(node.value) and ".." not in node.value:
        return True
    c.fail(node.mark, path, f"{node.value!r}: a VM with a volume `from: image` needs an image name of 1-128 "
                            "A-Z a-z 0-9 _ . : + - (starting with a letter or digit); rename the image")
    return False


def backing_name(source: str) -> str:
    """The pool volume a clone of `source` backs on: a master's own, or VOLUME@SNAP's snapshot volume."""
    volume, _, snap = source.partition("@")
    return f"{volume}{SNAP_INFIX}{snap}" if snap else volume
