"""The storage service made what the manager wants (contract 3's DesiredState `volumes`), and the
disks of this host's VMs as libvirt sees them.

`volume_actions` is pure: the volumes wanted, what the pool holds and exports, and the volumes
made for the manager before (with their `keep`) in; actions out, in this order: create (empty, a
copy-on-write clone of a pool volume, or a copy of the VM's image: from_image.py), export, allow
(a VM moved), unexport (no host needs it), then for a volume the manager no longer wants:
unexport, and delete unless `keep` (a kept one is left in the pool and forgotten: made again by
name if a farm asks for it later).

A volume the manager stops wanting is removed only after `GRACE_S` (the manager's plan may lose a
host's pool for a round; a volume's data is not thrown away for that).

`VolumeConverger` carries the actions out on a `VolumeService`, remembers what it made (a small
JSON file, so a restarted gatekeeper still removes them), and says what the pool holds for the
host report (`volumes: {name: {address, port, allowed}}`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatekeeper.hypervisor.domain import DiskSpec
from gatekeeper.volumes import from_image, snapshots
from gatekeeper.volumes.pool import Pool, VolumeError
from gatekeeper.volumes.service import VolumeService
from softudc.atomicfile import write_atomic
from softudc.model.hoststate import DesiredDisk, DesiredVolume

log = logging.getLogger("gatekeeper.volumes")
MB = 10**6  # a volume's `mbps` limit is in MB/s
GRACE_S = 15.0  # an unwanted volume is unexported and deleted once unwanted this long


@dataclass(frozen=True)
class VolumeAction:
    op: str  # create | export | allow | unexport | delete | forget | snapshot | flatten
    name: str
    args: dict[str, Any] = field(repr=False)  # an encrypted volume's key is among them: never shown

    def __str__(self) -> str:
        return f"volume.{self.op} {self.name}"


def volume_actions(wanted: Sequence[DesiredVolume], have: dict[str, dict[str, Any]], managed: dict[str, bool],
                   unwanted: Set[str] = frozenset()) -> list[VolumeAction]:
    """`have`: pool volume -> {allowed: [...]} if exported, else {}; `managed`: volumes made for the
    manager -> keep; `unwanted`: the managed volumes not wanted for GRACE_S already (removed now)."""
    actions = []
    for w in sorted(wanted, key=lambda v: v.name):
        special = snapshots.actions(w, have, VolumeAction)  # dropped, a snapshot, flattened (issue 13 item 3)
        actions += special if special is not None else _wanted(w, have)
    for name in sorted(unwanted & set(managed) - {w.name for w in wanted}):
        if "allowed" in have.get(name, {}):
            actions.append(VolumeAction("unexport", name, {}))
        if name in have and not managed[name]:
            actions.append(VolumeAction("delete", name, {}))
        actions.append(VolumeAction("forget", name, {}))
    return actions


def _wanted(w: DesiredVolume, have: dict[str, dict[str, Any]]) -> list[VolumeAction]:
    """A wanted volume's actions: create it, export it, follow its allow list, flatten it."""
    actions = []
    if w.name not in have:
        actions.append(VolumeAction("create", w.name, {"size_bytes": w.size_bytes, "backing": w.backing,
                                                       **({"key": w.key} if w.key else {}),
                                                       **({"image": w.image} if w.image else {})}))
    exported = "allowed" in have.get(w.name, {})
    if w.allowed and not exported:
        actions.append(VolumeAction("export", w.name, {"allowed": sorted(set(w.allowed)),
                                                       **({"key": w.key} if w.key else {})}))
    elif w.allowed and sorted(set(w.allowed)) != sorted(have[w.name]["allowed"]):
        actions.append(VolumeAction("allow", w.name, {"allowed": sorted(set(w.allowed))}))
    elif not w.allowed and exported:
        actions.append(VolumeAction("unexport", w.name, {}))
    if w.flatten and w.name in have:  # its chain reached the manager's soft depth limit
        actions.append(VolumeAction("flatten", w.name, {}))
    return actions


def disk_specs(disks: Sequence[DesiredDisk], pool: Pool | None) -> tuple[DiskSpec, ...]:
    """A VM's disks for its domain XML: a pool file of this host, or another host's export."""
    out = []
    for d in disks:
        iops, bytes_sec = d.iops, (d.mbps * MB if d.mbps else None)  # QoS: libvirt iotune
        if d.local:
            if pool is None:
                raise ValueError(f"disk {d.target}: volume {d.volume} is a pool file of this host, which runs no "
                                 "storage service ([volumes] in the gatekeeper file)")
            out.append(DiskSpec(d.target, path=str(pool.path(d.volume)), iops=iops, bytes_sec=bytes_sec))
        elif d.address is None or d.port is None:
            raise ValueError(f"disk {d.target}: volume {d.volume}'s export on {d.host} is not known yet")
        else:
            out.append(DiskSpec(d.target, nbd=(d.address, d.port, d.volume), iops=iops,
                                bytes_sec=bytes_sec))
    return tuple(out)


class VolumeConverger:
    def __init__(self, service: VolumeService, state_file: Path | None = None) -> None:
        self.service = service
        self.state_file = state_file
        self.managed: dict[str, bool] = self._load()
        self._unwanted_since: dict[str, float] = {}

    def _load(self) -> dict[str, bool]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            data = json.loads(self.state_file.read_bytes())
            return {str(k): bool(v) for k, v in data.get("managed", {}).items()}
        except (OSError, ValueError, AttributeError) as e:
            log.warning("%s: %s; volumes made for the manager before a restart will not be removed",
                        self.state_file, e)
            return {}

    def _save(self) -> None:
        if self.state_file is not None:
            write_atomic(self.state_file, json.dumps({"managed": self.managed}, sort_keys=True).encode())

    def have(self) -> dict[str, dict[str, Any]]:
        """Pool volume -> {address, port, allowed} if exported, else {}: the host report's `volumes`."""
        exports = self.service.exports
        out: dict[str, dict[str, Any]] = {p.name.removesuffix(".qcow2"): {}
                                          for p in self.service.pool.directory.glob("*.qcow2")}
        for name in exports.names():
            if name not in out:
                continue
            try:
                e = exports.describe(name)
            except VolumeError:  # unexported meanwhile: still held (one volume's export never drops the rest)
                continue
            out[name] = {"address": e["address"], "port": e["port"], "allowed": e["allowed"]}
        return out

    def converge(self, wanted: Sequence[DesiredVolume]) -> tuple[list[str], list[str]]:
        """One round: (what was done, errors). Each action's failure is said and the rest go on."""
        now = time.monotonic()
        names = {w.name for w in wanted}
        for w in wanted:
            self.managed[w.name] = w.keep
        self._unwanted_since = {n: self._unwanted_since.get(n, now) for n in self.managed if n not in names}
        due = {n for n, t in self._unwanted_since.items() if now - t >= GRACE_S}
        done, errors = [], []
        for action in volume_actions(wanted, self.have(), dict(self.managed), due):
            try:
                self._apply(action)
                done.append(str(action))
            except Exception as e:
                errors.append(f"{action}: {e}")
                log.warning("%s failed: %s", action, e)
        self._save()
        return done, errors

    def _apply(self, a: VolumeAction) -> None:
        s = self.service
        if a.op == "create" and "image" in a.args:  # a copy of the VM's image
            from_image.create(s.pool, a.name, a.args["size_bytes"], a.args["image"])
        elif a.op == "create":
            s.create(a.name, a.args["size_bytes"], a.args["backing"], a.args.get("key"))
        elif a.op == "export":
            s.export(a.name, a.args["allowed"], a.args.get("key"))
        elif a.op == "allow":
            s.allow(a.name, a.args["allowed"])
        elif a.op == "unexport":
            s.unexport(a.name)
        elif a.op == "delete":
            s.delete(a.name)
        elif a.op in ("snapshot", "flatten"):
            snapshots.apply(s, a.op, a.name, a.args)
        elif a.op == "forget":
            self.managed.pop(a.name, None)
            self._unwanted_since.pop(a.name, None)
