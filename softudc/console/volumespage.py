"""The volumes the console shows (issue 15 item 1): a farm's on its page, a VM's on the VM's page,
as GET /v1/volumes answers (softudc/manager/volumes_api.py: planned on a storage host, held once
that host reports it, unplaced with why), and the VM's image as its descriptor names it. The
farm page's volumes section has its own fragment: a volume turns held on a host's report, which
changes no farm, so it refreshes on the hosts' events as well as the farm's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from softudc.cli.volume import size_text
from softudc.console.common import view
from softudc.manager.apimodels import NAME_PATTERN
from softudc.manager.auth import Principal
from softudc.manager.service import Manager
from softudc.manager.volumes_api import volumes
from softudc.model.farm import VmDef

router = APIRouter(prefix="/console", include_in_schema=False)
FarmName = Annotated[str, Path(pattern=NAME_PATTERN)]


def volume_rows(m: Manager, who: Principal, farm: str, instance: str | None = None) -> list[dict[str, Any]]:
    """The farm's volumes (only `instance`'s when given), each with its size as the descriptor
    writes sizes (10Gi) and the export's address:port once its host exports it."""
    rows = [r for r in volumes(m, who, farm) if instance in (None, r["instance"])]
    for r in rows:
        export = r.get("export") or {}
        r["size"] = size_text(r["size_bytes"])
        r["where"] = f"{export['address']}:{export['port']}" if export.get("address") else ""
    return rows


def image_of(vm: VmDef | None) -> dict[str, str] | None:
    """The VM's image as its descriptor names it: `name`, and `version` when it names one
    (`name:version` or `name@version`; else the store's newest is what it gets)."""
    if vm is None:
        return None
    for sep in ("@", ":"):
        name, found, version = vm.image.partition(sep)
        if found and name and version:
            return {"name": name, "version": version}
    return {"name": vm.image, "version": ""}


def farm_volumes_context(m: Manager, who: Principal, farm: str) -> dict[str, Any]:
    m.get_farm(who, farm)  # 404 when `who` may not read it or it is gone
    return {"farm_name": farm, "volumes": volume_rows(m, who, farm), "per_vm": False}


@router.get("/fragments/farms/{name}/volumes")
def farm_volumes_fragment(request: Request, name: FarmName) -> HTMLResponse:
    return view(request, "_volumes.html", lambda m, who: farm_volumes_context(m, who, name), gone="farm gone")
