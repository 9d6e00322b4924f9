"""The farms' volumes as the manager plans them (issue 13 item 2), for `softudc volume list`; the
routes are volume_objects_api's (it adds standalone volumes, masters and snapshots to these):

    GET /v1/volumes[?farm=F]   [{id, farm, instance, volume, class, size_bytes, from, keep,
                                 host, vm_host, allowed, state: planned|held|unplaced, reason,
                                 export: {address, port, allowed} | null}]
    GET /v1/volumes/{id}       one of them (404 names what to do)
    DELETE /v1/volumes/{id}    refused while a farm wants it (409 says to edit or delete the farm)

From the farms' stored statuses and each host's latest report (`pool.free_bytes`: hosts without
a storage service get no volume; `volumes`: what each storage host holds and exports, contract 3).
`held`: the planned host reports the volume. Others than admins see the farms they may read.
"""

from __future__ import annotations

from typing import Any

from softudc.manager import volume_moves
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.volume_replicas import mirrored_rows
from softudc.manager.volumes import VolumePlan, VolumeView
from softudc.model.volume import split_volume_id, volume_id


def listing(plan: VolumePlan, sizes: dict[str, dict[str, Any]],
            held: dict[str, tuple[str, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The answer's rows, by id. `sizes`: volume id -> its definition's fields (for unplaced ones);
    `held`: volume -> (the host reporting it, its export)."""
    rows = []
    for vid, v in plan.volumes.items():
        host, export = (held or {}).get(vid, (None, {}))
        rows.append({**sizes[vid], "host": v.host, "vm_host": v.vm_host, "allowed": list(v.allowed),
                     "state": "held" if host == v.host else "planned", "reason": "",
                     "export": export if host == v.host and export.get("port") else None})
    for vid, why in plan.unplaced.items():
        rows.append({**sizes[vid], "host": None, "vm_host": None, "allowed": [], "state": "unplaced", "reason": why,
                     "export": None})
    return sorted(rows, key=lambda r: r["id"])


def volumes(m: Manager, who: Principal, farm: str | None = None) -> list[dict[str, Any]]:
    if farm is not None and not who.can_read(farm):
        raise ApiError(403, f"{who.name} ({who.role}) may not read farm {farm!r}")
    farms = [(f, o.status) for o in m.store.objects("farm")
             if who.can_read(o.name) and farm in (None, o.name) and (f := m.farms.for_hosts(o))]
    reports = m.reports()
    view = VolumeView(farms, reports, moves=volume_moves.records(m.store))
    held = dict(view.held)
    for vid, v in view.plan.volumes.items():  # held by its planned host (a moved one: both report it a while)
        if vid in ((reports.get(v.host) or {}).get("volumes") or {}):
            held[vid] = (v.host, volume_moves.export_of(reports, v.host, vid))
    sizes = {}
    for f, status in farms:
        for inst in status.get("instances", []):
            for vm in f.vms:
                for vol in vm.volumes if vm.name == inst.get("vm") else ():
                    vid = volume_id(f.name, inst["name"], vol.name)
                    sizes[vid] = {"id": vid, "farm": f.name, "instance": inst["name"], "volume": vol.name,
                                  "class": vol.cls, "size_bytes": vol.size_bytes, "from": vol.source,
                                  "keep": vol.keep, "encrypted": vol.encrypted, "iops": vol.iops,
                                  "mbps": vol.mbps}  # never the key (softudc/manager/volume_keys.py)
    return sorted(listing(view.plan, sizes, held) + mirrored_rows(view.mirrored, view.reports, sizes),
                  key=lambda r: str(r["id"]))


def volume(m: Manager, who: Principal, vid: str) -> dict[str, Any]:
    ids = split_volume_id(vid)
    if ids is None:
        raise ApiError(404, f"{vid!r} is not a farm volume's id (<farm>--<instance>--<volume>); "
                            "`softudc volume list` names them")
    for row in volumes(m, who, ids[0]) if m.store.get("farm", ids[0]) else []:
        if row["id"] == vid:
            move = m.store.get(volume_moves.KIND, vid)  # its latest move, if any (volume_moves_api.py)
            return {**row, "move": volume_moves.status(volume_moves.from_obj(move), m.reports())
                    if move is not None and not move.deleted else None}
    raise ApiError(404, f"no volume {vid}: farm {ids[0]} has no such instance or volume (`softudc volume list "
                        f"--farm {ids[0]}` names its volumes)")


def delete_volume(m: Manager, who: Principal, vid: str) -> dict[str, Any]:
    row = volume(m, who, vid)
    raise ApiError(409, f"volume {vid} belongs to VM {row['instance']} of farm {row['farm']}: remove it from the "
                        f"farm's descriptor and apply it, or delete the farm (a volume with keep: true stays then)")

