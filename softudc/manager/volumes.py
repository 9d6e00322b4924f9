"""Where each farm's volumes live and who may read them (issue 13 item 2). Pure: the caller hands
in the farms' stored statuses, each host's pool (its report's `pool.free_bytes`) and where the
volumes already are (the volumes' stored placements).

- `local` volumes live on the instance's host: created there, never exported (the VM opens the
  qcow2 file). An instance moving live to another host takes its local volume along only by a
  storage copy, which this version does not do: such a VM's migration policy must be cold or
  none, or its volumes remote (item "online moves", not in this version).
- `remote` volumes go to the host with the most free pool capacity that still fits the volume
  (ties: the host name), and stay there: a placement once made is kept as long as the host is
  known. They are exported over NBD+TLS; the allow list is every host an instance of the farm
  runs on or is moving to, so a live migration's destination can open the disk before the
  switch-over, and the list follows the VMs as they move.
- A clone of a master (`from: <master>`) is a qcow2 whose backing file is the master's, made on
  the master's host (a master is a pool volume a host reports that is not a farm's; creation time
  does not depend on its size). A `remote` clone is then exported like any remote volume; a
  `local` one needs the VM on the master's host (else unplaced: make it remote). Cloning over NBD
  from another host's master is not in this version.

A volume that cannot be placed (no host with room) is named in `unplaced` with the reason; the
farm's other volumes and VMs are planned all the same.

An `encrypted` volume's storage host gets its key (`key_of`: softudc/manager/volume_keys.py) in
its desired state; a view without `key_of` (the API's and metrics' views) hands out no volume of
that kind. A volume's QoS limits (`iops`, `mbps`) go with its disk to the VM's host (libvirt iotune).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from softudc.manager import volume_moves, volume_objects
from softudc.manager.volume_moves import Move
from softudc.manager.volume_replicas import MIRRORED, admits, mirrored_disk, place_mirrored, replica_volumes
from softudc.model.farm import Farm, VmDef
from softudc.model.volume import EMPTY, IMAGE, SNAP_INFIX, VolumeDef, backing_name, split_volume_id, volume_id


@dataclass(frozen=True)
class PlacedVolume:
    id: str  # <farm>--<instance>--<volume>
    host: str  # the storage host
    size_bytes: int
    cls: str
    source: str  # empty | image | a master's name
    keep: bool
    vm_host: str  # the host the instance runs on (or is placed on)
    allowed: tuple[str, ...] = ()  # hosts that may open its export; empty: not exported
    encrypted: bool = False


@dataclass
class VolumePlan:
    volumes: dict[str, PlacedVolume] = field(default_factory=dict)
    unplaced: dict[str, str] = field(default_factory=dict)  # volume id -> why

    def on_host(self, host: str) -> list[PlacedVolume]:
        """What `host`'s storage service should hold, in name order (its desired state)."""
        return sorted((v for v in self.volumes.values() if v.host == host), key=lambda v: v.id)


def farm_hosts(status: dict[str, Any]) -> tuple[str, ...]:
    """Every host an instance of the farm runs on or is moving to: the remote volumes' allow list."""
    hosts: set[str] = set()
    for inst in status.get("instances", []):
        hosts.add(inst["host"])
        to = (inst.get("migrating") or {}).get("to")
        if to:
            hosts.add(to)
    return tuple(sorted(hosts))


def plan_volumes(farms: Iterable[tuple[Farm, dict[str, Any]]], free: dict[str, int],
                 placed: dict[str, str], masters: dict[str, str] | None = None) -> VolumePlan:
    """Place every instance's volumes. `free`: each host's free pool bytes (hosts without a pool
    service are absent and get no remote volume); `placed`: volume id -> host, kept when that
    host is still in `free`; `masters`: master volume -> the host holding it."""
    plan = VolumePlan()
    room = dict(free)
    wanted = [(farm, status, inst, vol) for farm, status in farms for inst in status.get("instances", [])
              for vm in farm.vms if vm.name == inst.get("vm") for vol in vm.volumes
              if vol.cls != MIRRORED]  # mirrored ones: their replicas (volume_replicas.py)
    for farm, status, inst, vol in wanted:  # kept placements first: they hold their room already
        vid = volume_id(farm.name, inst["name"], vol.name)
        host = placed.get(vid)
        if host is not None and host in free:
            plan.volumes[vid] = _placed(vid, host, vol, inst["host"], status)
    for farm, status, inst, vol in wanted:
        vid = volume_id(farm.name, inst["name"], vol.name)
        if vid in plan.volumes:
            continue
        host, why = _choose(vol, inst["host"], room, masters or {})
        if host is None:
            plan.unplaced[vid] = why
            continue
        room[host] -= vol.size_bytes
        plan.volumes[vid] = _placed(vid, host, vol, inst["host"], status)
    return plan


def _placed(vid: str, host: str, vol: VolumeDef, vm_host: str, status: dict[str, Any]) -> PlacedVolume:
    allowed = farm_hosts(status) if vol.cls == "remote" else ()
    return PlacedVolume(vid, host, vol.size_bytes, vol.cls, vol.source, vol.keep, vm_host, allowed, vol.encrypted)


def _choose(vol: VolumeDef, vm_host: str, room: dict[str, int], masters: dict[str, str]) -> tuple[str | None, str]:
    if vol.master is not None:
        return _choose_clone(vol, vol.master, vm_host, room, masters)
    if vol.cls == "local":
        if vm_host not in room:
            return None, f"the VM's host {vm_host} runs no storage service ([volumes] in its gatekeeper file)"
        if room[vm_host] < vol.size_bytes:
            return None, f"{vm_host}'s pool has {room[vm_host]} bytes free, the volume needs {vol.size_bytes}"
        return vm_host, ""
    fits = [h for h, free in room.items() if free >= vol.size_bytes]
    if not fits:
        most = max(room.values(), default=0)
        return None, (f"no host's pool has {vol.size_bytes} bytes free (the most: {most}); add capacity or "
                      "make the volume smaller")
    return min(fits, key=lambda h: (-room[h], h)), ""


def _choose_clone(vol: VolumeDef, master: str, vm_host: str, room: dict[str, int],
                  masters: dict[str, str]) -> tuple[str | None, str]:
    """A clone lives on its master's host (its backing file is the master's qcow2)."""
    host = masters.get(backing_name(master))  # a master's, or VOLUME@SNAP's snapshot volume
    if host is None:
        return None, (f"no host holds the master volume {master}; create it in a host's pool first "
                      "(gatekeeper local API volume.create)")
    if vol.cls == "local" and host != vm_host:
        return None, (f"a local clone of {master} must be on {host}, the master's host, not on the VM's host "
                      f"{vm_host}; make the volume `class: remote`")
    if room.get(host, 0) < vol.size_bytes:
        return None, f"{host} (the master's host) has {room.get(host, 0)} bytes free, the clone needs {vol.size_bytes}"
    return host, ""


def farm_deleted(farm_name: str, volumes: Iterable[PlacedVolume]) -> tuple[list[str], list[str]]:
    """(volumes to delete, volumes kept) when a farm is deleted: `keep: true` ones stay."""
    delete: list[str] = []
    kept: list[str] = []
    for v in volumes:
        ids = split_volume_id(v.id)
        if ids is None or ids[0] != farm_name:
            continue
        (kept if v.keep else delete).append(v.id)
    return sorted(delete), sorted(kept)


def master_readers(plan: VolumePlan, master_host: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """Each master's allow list: the hosts holding a clone of it elsewhere (their qcow2 reads the
    master over NBD). `master_host`: master name -> its host."""
    readers: dict[str, set[str]] = {}
    for v in plan.volumes.values():
        if v.source in master_host and master_host[v.source] != v.host:
            readers.setdefault(v.source, set()).add(v.host)
    return {m: tuple(sorted(h)) for m, h in readers.items()}


TARGETS = "bcdefghi"  # a VM's volumes are vdb, vdc, ... in descriptor order (at most 8)


def held(reports: dict[str, dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every pool volume the hosts report (contract 3): name -> (host, {address, port, allowed})."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for host, r in sorted(reports.items()):
        for name, v in (r.get("volumes") or {}).items():
            out.setdefault(name, (host, v if isinstance(v, dict) else {}))
    return out


def pool_free(reports: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each host's free pool bytes, from the reports that carry a pool."""
    out = {}
    for host, r in reports.items():
        free = (r.get("pool") or {}).get("free_bytes")
        if isinstance(free, int) and not isinstance(free, bool):
            out[host] = free
    return out


def image_sources(farms: Iterable[tuple[Farm, dict[str, Any]]]) -> dict[str, str]:
    """Volume id -> its VM's image, for the volumes `from: image` (gatekeeper/volumes/from_image.py)."""
    return {volume_id(farm.name, inst["name"], vol.name): vm.image for farm, status in farms
            for inst in status.get("instances", []) for vm in farm.vms if vm.name == inst.get("vm")
            for vol in vm.volumes if vol.source == IMAGE}


class VolumeView:
    """The volumes' part of every host's desired state, worked out once per read of the farms and
    reports: what each storage host holds and exports, each VM's disks, and whether a moving VM's
    disks already admit its destination (the source hands it over only then)."""

    def __init__(self, farms: list[tuple[Farm, dict[str, Any]]], reports: dict[str, dict[str, Any]],
                 key_of: Callable[[str], str] | None = None, moves: Mapping[str, Move] | None = None,
                 objects: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.key_of = key_of
        self.reports, self.moves = reports, dict(moves or {})  # moves: softudc/manager/volume_moves.py
        self.held = held(reports)
        placed = {name: host for name, (host, _) in self.held.items() if split_volume_id(name) is not None}
        placed.update(volume_moves.placements(self.moves, reports))  # not whichever host lists it first
        masters = {name: host for name, (host, _) in self.held.items()  # masters, standalone volumes, snapshots
                   if split_volume_id(name) is None or SNAP_INFIX in name}
        with_volumes = [(f, st) for f, st in farms if any(vm.volumes for vm in f.vms)]
        free = pool_free(reports)
        for host in placed.values():  # a report without its pool (unreadable for a round) keeps what it holds
            free.setdefault(host, 0)
        self.plan = plan_volumes(with_volumes, free, placed, masters)
        self.images = image_sources(with_volumes)  # `from: image`: the VM's image the host copies
        self.mirrored = place_mirrored(with_volumes, reports, free, self.plan.volumes.values())  # their replicas
        self.objects = volume_objects.Tree(dict(objects or {}), {n: h for n, (h, _) in self.held.items()},
                                           {v.id: (v.source, v.size_bytes) for v in self.plan.volumes.values()})

    def for_host(self, host: str) -> list[dict[str, Any]]:
        """The DesiredState `volumes` of `host`."""
        out = []
        for v in self.plan.on_host(host):
            if v.encrypted and self.key_of is None:
                continue  # a view that holds no keys never makes an encrypted volume a plain one
            moved_here = v.id in self.moves and self.moves[v.id].to == host  # a move's copy is flat
            source = backing_name(v.source) if v.source not in (EMPTY, IMAGE) and not moved_here else None
            out.append({"name": v.id, "size_bytes": v.size_bytes, **({"backing": source} if source else {}),
                        "allowed": list(v.allowed), "keep": v.keep,
                        **({"key": self.key_of(v.id)} if v.encrypted and self.key_of else {}),
                        **({"image": self.images[v.id]} if v.id in self.images and not moved_here else {})})
        if self.moves:  # a move's destination holds the volume before the switch-over
            sizes = {v.id: (v.size_bytes, v.allowed, v.keep) for v in self.plan.volumes.values()}
            out = sorted(out + volume_moves.destination_volumes(self.moves, self.reports, host, sizes),
                         key=lambda v: str(v["name"]))
        out += replica_volumes(self.mirrored, host)  # mirrored volumes' replicas (volume_replicas.py)
        return out + volume_objects.desired(self.objects, host, set(self.plan.volumes))  # standalone, snapshots

    def disks(self, farm: str, instance: str, vm: VmDef) -> list[dict[str, Any]]:
        """The DesiredVm `disks` of an instance, vdb onwards: one not placed yet, or not exported
        yet, has no address (the VM is not started without it)."""
        out = []
        for target, vol in zip(TARGETS, vm.volumes, strict=False):
            vid = volume_id(farm, instance, vol.name)
            if vid in self.mirrored:  # its replicas' exports: the VM's host joins them (quorum)
                out.append(mirrored_disk(self.mirrored[vid], f"vd{target}", self.reports))
                continue
            placed = self.plan.volumes.get(vid)
            if placed is None:  # not placed (yet): the VM waits for it; GET /v1/volumes says why
                out.append({"volume": vid, "target": f"vd{target}"})
                continue
            disk: dict[str, Any] = {"volume": placed.id, "target": f"vd{target}", "host": placed.host,
                                    **{k: v for k, v in (("iops", vol.iops), ("mbps", vol.mbps)) if v}}
            if placed.cls == "local":
                disk["local"] = True
            else:
                export = volume_moves.export_of(self.reports, placed.host, placed.id)
                if export.get("port") and export.get("address"):
                    disk.update(address=export["address"], port=export["port"])
                if move := volume_moves.disk_move(self.moves.get(vid), self.reports, placed.vm_host):
                    disk["move"] = move
            out.append(disk)
        return out

    def admit(self, farm: str, instance: str, vm: VmDef, host: str) -> bool:
        """Every remote volume of the instance is exported to `host` (a live migration's
        destination opens the disks before the switch-over), and none is being moved (libvirt
        refuses to migrate a domain with a block copy job: the migration waits for the move)."""
        for vol in vm.volumes:
            vid = volume_id(farm, instance, vol.name)
            if vid in self.moves and volume_moves.in_flight(self.reports, self.moves[vid]):
                return False
            if vid in self.mirrored and not admits(self.mirrored[vid], self.reports, host):
                return False
            placed = self.plan.volumes.get(vid)
            if placed is not None and placed.cls != "local" and host not in volume_moves.export_of(
                    self.reports, placed.host, vid).get("allowed", []):
                return False
        return True
