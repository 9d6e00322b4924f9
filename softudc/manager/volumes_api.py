"""The farms' volumes as the manager plans them (issue 13 item 2), for `softudc volume list`.

    GET /v1/volumes[?farm=F]   [{id, farm, instance, volume, class, size_bytes, from, keep,
                                 host, vm_host, allowed, state: planned|unplaced, reason}]

From the farms' stored statuses and each host's latest report (`pool.free_bytes`: hosts without
a storage service get no volume). A planning view: the hosts' desired states do not carry volumes
yet (docs/volumes.md, "What is left"). Others than admins see the farms they may read.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from softudc.manager.apideps import Mgr, Who
from softudc.manager.apimodels import errors
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.volumes import VolumePlan, VolumeView
from softudc.model.volume import volume_id

router = APIRouter()


def listing(plan: VolumePlan, sizes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The answer's rows, by id. `sizes`: volume id -> its definition's fields (for unplaced ones)."""
    rows = []
    for vid, v in plan.volumes.items():
        rows.append({**sizes[vid], "host": v.host, "vm_host": v.vm_host, "allowed": list(v.allowed),
                     "state": "planned", "reason": ""})
    for vid, why in plan.unplaced.items():
        rows.append({**sizes[vid], "host": None, "vm_host": None, "allowed": [], "state": "unplaced", "reason": why})
    return sorted(rows, key=lambda r: r["id"])


def volumes(m: Manager, who: Principal, farm: str | None = None) -> list[dict[str, Any]]:
    if farm is not None and not who.can_read(farm):
        raise ApiError(403, f"{who.name} ({who.role}) may not read farm {farm!r}")
    farms = [(f, o.status) for o in m.store.objects("farm")
             if who.can_read(o.name) and farm in (None, o.name) and (f := m.farms.for_hosts(o))]
    plan = VolumeView(farms, m.reports()).plan
    sizes = {}
    for f, status in farms:
        for inst in status.get("instances", []):
            for vm in f.vms:
                for vol in vm.volumes if vm.name == inst.get("vm") else ():
                    vid = volume_id(f.name, inst["name"], vol.name)
                    sizes[vid] = {"id": vid, "farm": f.name, "instance": inst["name"], "volume": vol.name,
                                  "class": vol.cls, "size_bytes": vol.size_bytes, "from": vol.source,
                                  "keep": vol.keep}
    return listing(plan, sizes)


@router.get("/v1/volumes", summary="The farms' volumes: where each is planned and who may open it",
            responses=errors(401, 403))
def get_volumes(m: Mgr, who: Who,
                farm: Annotated[str | None, Query(max_length=255, description="only this farm")] = None) \
        -> list[dict[str, Any]]:
    return volumes(m, who, farm)
