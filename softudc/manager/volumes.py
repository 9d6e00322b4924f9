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
- A clone of a master (`from: <master>`) is a qcow2 whose backing file is the master's: on the
  master's host when the volume is placed there, else the master's NBD export (creation time does
  not depend on the master's size). A local clone of a master on another host is therefore served
  over NBD to its own host too: the master's allow list gets every host with a clone on it.

A volume that cannot be placed (no host with room) is named in `unplaced` with the reason; the
farm's other volumes and VMs are planned all the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from softudc.model.farm import Farm
from softudc.model.volume import VolumeDef, split_volume_id, volume_id


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
                 placed: dict[str, str]) -> VolumePlan:
    """Place every instance's volumes. `free`: each host's free pool bytes (hosts without a pool
    service are absent and get no remote volume); `placed`: volume id -> host, kept when that
    host is still in `free`."""
    plan = VolumePlan()
    room = dict(free)
    wanted = [(farm, status, inst, vol) for farm, status in farms for inst in status.get("instances", [])
              for vm in farm.vms if vm.name == inst.get("vm") for vol in vm.volumes]
    for farm, status, inst, vol in wanted:  # kept placements first: they hold their room already
        vid = volume_id(farm.name, inst["name"], vol.name)
        host = placed.get(vid)
        if host is not None and host in free:
            plan.volumes[vid] = _placed(vid, host, vol, inst["host"], status)
    for farm, status, inst, vol in wanted:
        vid = volume_id(farm.name, inst["name"], vol.name)
        if vid in plan.volumes:
            continue
        host, why = _choose(vol, inst["host"], room)
        if host is None:
            plan.unplaced[vid] = why
            continue
        room[host] -= vol.size_bytes
        plan.volumes[vid] = _placed(vid, host, vol, inst["host"], status)
    return plan


def _placed(vid: str, host: str, vol: VolumeDef, vm_host: str, status: dict[str, Any]) -> PlacedVolume:
    allowed = farm_hosts(status) if vol.cls == "remote" else ()
    return PlacedVolume(vid, host, vol.size_bytes, vol.cls, vol.source, vol.keep, vm_host, allowed)


def _choose(vol: VolumeDef, vm_host: str, room: dict[str, int]) -> tuple[str | None, str]:
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
