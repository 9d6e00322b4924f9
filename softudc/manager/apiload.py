"""What hosts and VMs use (issue 12), for `softudc top` and the balancer's users.

    GET /v1/load/hosts   [{host, state, vms, capacity: {cpu_cores, memory_mib}, at, age_s, samples,
                           cpu_cores: {short, long}, memory_mib: {short, long}}]
    GET /v1/load/vms     [{vm, farm, host, at, age_s, cpu_cores: {short, long}, memory_mib: {...}}]
    POST /v1/hosts/{name}/drain    (admin) plan, then move every VM away; 409 naming each VM that
                                   cannot move (nothing changed); again: one more step;
                                   body {"power_off": true}: then powered off, identify LED lit
    GET  /v1/hosts/{name}/drain    {host, state, total, moved, moving, left}
    POST /v1/hosts/{name}/undrain  (admin) back to ready (softudc/manager/drain.py)

From every manager's written load view (softudc/manager/load.py) and this manager's unwritten
one. A host that has sent no load yet is listed without figures. Anyone with a token may read the
hosts' totals (as they may read the hosts' capacity); only admins see every VM, others the VMs of
the farms they may read (as reports.visible_to).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, ConfigDict

from softudc.manager import drain
from softudc.manager.apideps import Mgr, Who
from softudc.manager.apimodels import NAME_PATTERN, errors
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.load import load_of
from softudc.manager.service import Manager
from softudc.model.hoststate import split_vm_name

HostName = Annotated[str, Path(pattern=NAME_PATTERN, description="a host")]

router = APIRouter()


def _mine(who: Principal, vm: str) -> bool:
    owner = split_vm_name(vm)
    return owner is not None and who.can_read(owner[0])


def host_loads(m: Manager, who: Principal) -> list[dict[str, Any]]:
    """Every host with its state, capacity and load (GET /v1/load/hosts)."""
    loads = load_of(m.store, extra=m.load_view.latest())
    out = []
    for host, report in sorted(m.reports().items()):
        load = loads.get(host, {})
        running = [v for v in report.get("running", []) if who.role == "admin" or _mine(who, v)]
        row: dict[str, Any] = {"host": host, "state": report.get("state", "ready"), "vms": len(running),
                               "capacity": {"cpu_cores": report.get("vcpus"), "memory_mib": report.get("memory_mib")}}
        row.update({k: load[k] for k in ("at", "age_s", "samples", "cpu_cores", "memory_mib") if k in load})
        out.append(row)
    return out


def vm_loads(m: Manager, who: Principal) -> list[dict[str, Any]]:
    """Every VM `who` may see with its host and load (GET /v1/load/vms)."""
    out = []
    for host, load in load_of(m.store, extra=m.load_view.latest()).items():
        for vm, fig in sorted(load["vms"].items()):
            owner = split_vm_name(vm)
            if owner is None or not who.can_read(owner[0]):
                continue
            out.append({"vm": vm, "farm": owner[0], "host": host, "at": load["at"], "age_s": load["age_s"], **fig})
    return sorted(out, key=lambda r: (r["farm"], r["vm"]))


@router.get("/v1/load/hosts", summary="Each host's state, capacity and what its VMs use (short and long means)",
            responses=errors(401))
def list_host_loads(m: Mgr, who: Who) -> list[dict[str, Any]]:
    return host_loads(m, who)


@router.get("/v1/load/vms", summary="What each VM uses (the farms' VMs a viewer may read)", responses=errors(401))
def list_vm_loads(m: Mgr, who: Who) -> list[dict[str, Any]]:
    return vm_loads(m, who)


class DrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    power_off: bool = False  # once empty and in maintenance: powered off (confirmed), identify LED lit


@router.post("/v1/hosts/{name}/drain", summary="Move every VM off a host, then put it in maintenance (admin)",
             responses=errors(401, 403, 404, 409))
def drain_host(m: Mgr, who: Who, name: HostName,
               body: Annotated[DrainRequest | None, Body()] = None) -> dict[str, Any]:
    return drain.start(m, who, name, power_off=bool(body and body.power_off))


@router.get("/v1/hosts/{name}/drain", summary="How far a host's drain is", responses=errors(401, 403, 404))
def drain_progress(m: Mgr, who: Who, name: HostName) -> dict[str, Any]:
    if who.role != "admin":  # it names every farm's VMs
        raise ApiError(403, f"{who.name} ({who.role}) may not see drains; that takes an admin token")
    return drain.progress(m, name)


@router.post("/v1/hosts/{name}/undrain", summary="A drained host back to ready (admin)",
             responses=errors(401, 403, 404))
def undrain_host(m: Mgr, who: Who, name: HostName) -> dict[str, Any]:
    return drain.undrain(m, who, name)
