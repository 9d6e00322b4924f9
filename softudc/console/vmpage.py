"""A VM's page, /console/farms/FARM/vms/INSTANCE: its host and state, addresses and MACs on each
VNET, image, what it uses now (from the hosts' load reports) with a short history, its events,
and a move under way with the progress its source reports; an admin picks a host to migrate it to
(the form posts to actions.migrate). The fragment refreshes on the farm's and the hosts' events
and, while the VM moves, every second."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from softudc.console.common import history, view
from softudc.console.history import LoadHistory, percent, sparkline
from softudc.console.volumespage import image_of, volume_rows
from softudc.manager.apimodels import INSTANCE_PATTERN, NAME_PATTERN
from softudc.manager.auth import Principal
from softudc.manager.farms import FARMS
from softudc.manager.load import load_of
from softudc.manager.service import ApiError, Manager
from softudc.manager.usage import usage_of
from softudc.model.farm import Farm, VmDef
from softudc.model.hoststate import nic_mac, vm_name

router = APIRouter(prefix="/console", include_in_schema=False)
FarmName = Annotated[str, Path(pattern=NAME_PATTERN)]
Instance = Annotated[str, Path(pattern=INSTANCE_PATTERN)]
EVENTS_READ = 500  # the farm's newest events searched for this VM's
EVENTS_SHOWN = 30


def farm_def(m: Manager, name: str) -> Farm | None:
    """The farm's parsed descriptor (cached), None when it no longer validates."""
    obj = m.store.get("farm", name)
    return FARMS.for_hosts(obj) if obj is not None else None


def _nics(farm: str, inst: dict[str, Any], vm: VmDef | None, ids: dict[str, int]) -> list[dict[str, Any]]:
    names = [n.vnet for n in vm.nics] if vm else sorted(inst.get("addresses", {}))
    return [{"vnet": v, "id": ids.get(v), "address": inst.get("addresses", {}).get(v),
             "mac": inst.get("macs", {}).get(v) or nic_mac(farm, inst["name"], v)} for v in names]


def _load(m: Manager, host: str, name: str, hist: LoadHistory, vm: VmDef | None) -> dict[str, Any]:
    """What the VM uses now (short window), as a share of what it was given, and its history."""
    fig = load_of(m.store, extra=m.load_view.latest()).get(host, {})
    mine = fig.get("vms", {}).get(name)
    if mine is None:
        return {}
    hist.note(f"vm/{name}", fig.get("at"), mine)
    series = hist.series(f"vm/{name}")
    vcpus, mem = (vm.vcpus, vm.memory_mib) if vm else (0, 0)
    cpu, used = mine["cpu_cores"]["short"], mine["memory_mib"]["short"]
    return {"cpu": cpu, "mem": used, "cpu_pct": percent(cpu, vcpus), "mem_pct": percent(used, mem),
            "age_s": fig.get("age_s"), "cpu_line": sparkline([p[1] for p in series], float(vcpus)),
            "mem_line": sparkline([p[2] for p in series], float(mem))}


def move_of(m: Manager, inst: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A move under way: its state, steps and, once copying, the source's bytes copied / total."""
    moving = inst.get("migrating")
    if not moving:
        return None
    job = m.reports().get(inst["host"], {}).get("migrations", {}).get(name) or {}
    if job.get("attempt") not in (None, moving.get("attempt")):
        job = {}  # an earlier attempt's job
    # the source's report now, else what the controllers last copied from it into the record
    done = job.get("data_processed", moving.get("data_processed"))
    total = job.get("data_total", moving.get("data_total"))
    return {"to": moving.get("to"), "state": moving.get("state", "?"), "cold": bool(moving.get("cold")),
            "steps": moving.get("steps", []), "done": done, "total": total, "pct": percent(done, total),
            "job": job.get("state")}


def vm_context(m: Manager, who: Principal, farm: str, instance: str, hist: LoadHistory) -> dict[str, Any]:
    """Everything the VM page shows; ApiError 404 when `who` may not read the farm or it has no such VM."""
    f = m.get_farm(who, farm)
    inst = next((i for i in f["status"].get("instances", []) if i["name"] == instance), None)
    if inst is None:
        raise ApiError(404, f"farm {farm} has no placed instance {instance!r}")
    fd = farm_def(m, farm)
    vm = next((v for v in fd.vms if v.name == inst["vm"]), None) if fd else None
    name = vm_name(farm, instance)
    word = re.compile(rf"(?<![\w-]){re.escape(instance)}(?![\w-])")
    events = [e for e in m.store.events("farm", farm, EVENTS_READ) if word.search(str(e.get("message", "")))]
    reports = m.reports()
    targets = sorted(h for h, r in reports.items() if r.get("state") == "ready" and h != inst["host"]) \
        if who.can_write(farm) and who.role == "admin" else []
    return {"farm": f, "inst": inst, "vm": vm, "vm_name": name, "nics": _nics(farm, inst, vm, f["status"].get(
                "vnet_ids", {})), "load": _load(m, inst["host"], name, hist, vm), "move": move_of(m, inst, name),
            "events": events[-EVENTS_SHOWN:][::-1], "targets": targets,
            "host_state": reports.get(inst["host"], {}).get("state", "?"),
            "usage": usage_of(m.store, extra=m.usage.latest()).get(name), "image": image_of(vm),
            "volumes": volume_rows(m, who, farm, instance), "per_vm": True}


@router.get("/farms/{farm}/vms/{instance}")
def vm_page(request: Request, farm: FarmName, instance: Instance) -> HTMLResponse:
    return view(request, "vm.html", lambda m, who: vm_context(m, who, farm, instance, history(request)))


@router.get("/fragments/farms/{farm}/vms/{instance}")
def vm_fragment(request: Request, farm: FarmName, instance: Instance) -> HTMLResponse:
    return view(request, "_vm.html", lambda m, who: vm_context(m, who, farm, instance, history(request)),
                gone="this VM is gone")
