"""A VNET's page, /console/farms/FARM/vnets/VNET: its id, subnet, security and MTU; the member
hosts (those running an instance on it or moving one there, and those carrying it anyway, as their
reports say) with their underlay addresses; and each instance's MAC and address on it with the
host it lives on. That table is where the gatekeepers' VARP resolves each MAC to (the manager
holds no copy of their caches: `softudc varp cache` reads each host's own from its gatekeeper)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from softudc.console.common import view
from softudc.console.vmpage import farm_def
from softudc.manager.apimodels import NAME_PATTERN
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager
from softudc.model.hoststate import nic_mac

router = APIRouter(prefix="/console", include_in_schema=False)
FarmName = Annotated[str, Path(pattern=NAME_PATTERN)]
VnetName = Annotated[str, Path(pattern=NAME_PATTERN)]


def _members(reports: dict[str, dict[str, Any]], placed: set[str], vid: int | None) -> list[dict[str, Any]]:
    carrying = {h for h, r in reports.items() if vid is not None and vid in (r.get("vnets") or [])}
    return [{"host": h, "underlay": reports.get(h, {}).get("underlay", "?"),
             "state": reports.get(h, {}).get("state", "?"),
             "why": "runs an instance on it" if h in placed else "carries it (reported)"}
            for h in sorted(placed | carrying)]


def vnet_context(m: Manager, who: Principal, farm: str, vnet: str) -> dict[str, Any]:
    """Everything the VNET page shows; ApiError 404 when `who` may not read the farm or it has no such VNET."""
    f = m.get_farm(who, farm)
    fd = farm_def(m, farm)
    vdef = next((v for v in fd.vnets if v.name == vnet), None) if fd else None
    if vdef is None or fd is None:
        raise ApiError(404, f"farm {farm} has no VNET {vnet!r}")
    on = {v.name for v in fd.vms if any(n.vnet == vnet for n in v.nics)}
    vid = f["status"].get("vnet_ids", {}).get(vnet)
    rows, placed = [], set()
    for i in f["status"].get("instances", []):
        if i["vm"] not in on:
            continue
        moving = i.get("migrating") or {}
        placed |= {i["host"], *([moving["to"]] if moving.get("to") else [])}
        rows.append({"name": i["name"], "host": i["host"], "to": moving.get("to"),
                     "address": i.get("addresses", {}).get(vnet),
                     "mac": i.get("macs", {}).get(vnet) or nic_mac(farm, i["name"], vnet)})
    return {"farm": f, "vnet": vdef, "vid": vid, "instances": rows,
            "members": _members(m.reports(), placed, vid)}


@router.get("/farms/{farm}/vnets/{vnet}")
def vnet_page(request: Request, farm: FarmName, vnet: VnetName) -> HTMLResponse:
    return view(request, "vnet.html", lambda m, who: vnet_context(m, who, farm, vnet))


@router.get("/fragments/farms/{farm}/vnets/{vnet}")
def vnet_fragment(request: Request, farm: FarmName, vnet: VnetName) -> HTMLResponse:
    return view(request, "_vnet.html", lambda m, who: vnet_context(m, who, farm, vnet), gone="this VNET is gone")
