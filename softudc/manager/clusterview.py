"""The manager's state as the balancer sees it (issue 12 item 3): a placement `Cluster`.

Hosts: every host that reported its capacity, with its state (`degraded` counts as `ready`: it
still runs VMs; any state the balancer does not know counts as `down`). VMs: every farm instance,
named `farm/instance`, with its VM's allocation and group (`farm/group`, so two farms' groups never
mix), its measured use from `load_of` (the WINDOW mean; none yet: its allocation) and the time of
its last move (the latest `Migrated` event of its farm naming it, or now while it is moving, so a
VM on its way is in cooldown and not planned again; so is a VM of migration policy `none`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from softudc.manager.farms import FARMS
from softudc.manager.store import Store
from softudc.model.hoststate import vm_name
from softudc.placement.cluster import HOST_STATES, BHost, BVm, Cluster
from softudc.placement.model import Group

WINDOW = "short"  # which load mean the balancer reads: short (1 min) follows a burst, long (10 min) is steadier
EVENTS = 500  # a farm's latest events read for its VMs' last moves


@dataclass(frozen=True)
class Where:
    farm: str
    instance: str


def _state(report: dict[str, Any]) -> str:
    state = str(report.get("state", "ready"))
    if state == "degraded":
        return "ready"
    return state if state in HOST_STATES else "down"


def hosts_of(reports: dict[str, dict[str, Any]]) -> list[BHost]:
    return [BHost(name, int(r["vcpus"]), int(r["memory_mib"]), _state(r))
            for name, r in sorted(reports.items()) if r.get("vcpus") and r.get("memory_mib")]


def last_moves(store: Store, farm: str) -> dict[str, float]:
    """instance -> unix time of its latest `Migrated` event (message `inst: src -> dst ...`)."""
    out: dict[str, float] = {}
    for e in store.events("farm", farm, limit=EVENTS):
        if e.get("type") == "Migrated":
            inst = str(e.get("message", "")).split(":", 1)[0].strip()
            out[inst] = max(out.get(inst, 0.0), float(e.get("time", 0.0)))
    return out


def _use(loads: dict[str, dict[str, Any]], host: str, name: str) -> tuple[float | None, float | None]:
    fig = loads.get(host, {}).get("vms", {}).get(name)
    if not isinstance(fig, dict):
        return None, None
    cpu, mem = fig.get("cpu_cores", {}).get(WINDOW), fig.get("memory_mib", {}).get(WINDOW)
    return (None if cpu is None else float(cpu)), (None if mem is None else float(mem))


def cluster_of(store: Store, reports: dict[str, dict[str, Any]], loads: dict[str, dict[str, Any]],
               now: float | None = None) -> tuple[Cluster, dict[str, Where]]:
    """The Cluster and where each of its VMs comes from (`farm/instance` -> Where). Instances on a
    host that has not reported its capacity are left out (the balancer cannot weigh that host)."""
    now = time.time() if now is None else now
    hosts = hosts_of(reports)
    known = {h.name for h in hosts}
    vms: list[BVm] = []
    groups: dict[str, Group] = {}
    index: dict[str, Where] = {}
    for obj in store.objects("farm"):
        farm = FARMS.for_hosts(obj)
        if farm is None:
            continue
        for g in farm.groups:
            groups[f"{farm.name}/{g.name}"] = Group(f"{farm.name}/{g.name}", g.policy, g.max_per_host)
        defs = {v.name: v for v in farm.vms}
        moved = last_moves(store, obj.name)
        for inst in obj.status.get("instances", []):
            vm = defs.get(inst.get("vm", ""))
            if vm is None or inst.get("host") not in known:
                continue
            name = f"{obj.name}/{inst['name']}"
            cpu, mem = _use(loads, inst["host"], vm_name(obj.name, inst["name"]))
            # moving now, or never to move (policy none): as if just moved, so the balancer leaves it
            at = now if inst.get("migrating") or vm.migration == "none" else moved.get(inst["name"])
            group = f"{obj.name}/{vm.group}" if vm.group else None
            vms.append(BVm(name, inst["host"], vm.vcpus, vm.memory_mib, cpu, mem, group, at))
            index[name] = Where(obj.name, inst["name"])
    return Cluster(hosts, vms, groups), index
