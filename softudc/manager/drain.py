"""Draining a host (issue 12, item 5): every VM moved elsewhere, then the host in `maintenance`
until an admin undrains it (back to `ready`).

`plan` first finds every VM a destination by the placement rules (planner.move_fit: room, groups,
anti-affinity), charging each planned move before the next, so the moves together fit. If any VM
cannot move (no host has room or allows it by its rules, or its migration policy is `none`), the
drain is refused naming each such VM and why, and nothing is changed. Otherwise the host goes to
`draining` (placement skips it), its spec records the drain (`drain: {total, at}`), and `step`
starts migrations through the usual workflow (Manager.migrate), at most PARALLEL at a time. Each
step plans again what is left (destinations may have changed meanwhile); a thread of the manager
that started the drain steps every STEP_S until the host is empty, and a POST of the drain route
steps too (a manager restarted meanwhile resumes there). Empty and nothing moving: `maintenance`.
Every step that does something is an event of the host.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from softudc.manager.auth import Principal
from softudc.manager.controller import inventory
from softudc.manager.errors import ApiError
from softudc.manager.farms import FARMS, Usage
from softudc.manager.planner import Instance, move_fit
from softudc.model.farm import Farm

if TYPE_CHECKING:
    from softudc.manager.service import Manager

log = logging.getLogger("softudc.manager.drain")

PARALLEL = 2  # migrations a drain runs at once
STEP_S = 2.0  # how often the drain's thread steps
GIVE_UP_S = 3600.0  # a drain's thread stops after this long (a POST of the route resumes it)


@dataclass
class DrainPlan:
    moves: list[tuple[str, str, str]] = field(default_factory=list)  # (farm, instance, destination)
    refused: list[str] = field(default_factory=list)  # "farm/instance: why"
    moving: list[str] = field(default_factory=list)  # instances already on their way out


def _farms(m: Manager) -> list[tuple[str, Farm | None, dict[str, Any]]]:
    return [(o.name, FARMS.for_hosts(o), copy.deepcopy(o.status)) for o in m.store.objects("farm")]


def _destination(farm: Farm, statuses: list[tuple[str, Farm | None, dict[str, Any]]], reports: dict[str, Any],
                 host: str, inst: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The first ready host (fewest instances first) `inst` fits on, or None and why not on each."""
    usage = Usage(statuses)
    mine = next(s for n, _, s in statuses if n == farm.name).get("instances", [])
    current = [Instance(i["name"], i["vm"], i["host"], migrating=i.get("migrating")) for i in mine]
    count = {h: 0 for h in reports}
    for _, _, s in statuses:
        for i in s.get("instances", []):
            count[i["host"]] = count.get(i["host"], 0) + 1
    why: list[str] = []
    for to in sorted((h for h, r in reports.items() if h != host and r.get("state") == "ready"),
                     key=lambda h: (count.get(h, 0), h)):
        problems = move_fit(farm, usage.hosts(inventory(reports), farm.name), current, inst["name"], to)
        if not problems:
            return to, []
        why.append(f"{to}: {'; '.join(problems)}")
    return None, why or ["no other host is ready"]


def plan(m: Manager, host: str) -> DrainPlan:
    """Where every VM on `host` goes (moves charged one after the other), or why some cannot."""
    reports, statuses, out = m.reports(), _farms(m), DrainPlan()
    for name, farm, status in statuses:
        for inst in status.get("instances", []):
            if inst.get("host") != host:
                continue
            if inst.get("migrating"):
                out.moving.append(f"{name}/{inst['name']}")
                continue
            vm = next((v for v in farm.vms if v.name == inst.get("vm")), None) if farm else None
            if farm is None or vm is None:
                out.refused.append(f"{name}/{inst['name']}: its farm's descriptor does not describe it")
                continue
            if vm.migration == "none":
                out.refused.append(f"{name}/{inst['name']}: its VM {vm.name} has migration policy 'none'")
                continue
            to, why = _destination(farm, statuses, reports, host, inst)
            if to is None:
                out.refused.append(f"{name}/{inst['name']}: no host can take it ({' | '.join(why)})")
                continue
            out.moves.append((name, inst["name"], to))
            inst["host"] = to  # charged for the next moves
    return out


def _host(m: Manager, host: str) -> Any:
    obj = m.store.get("host", host)
    if obj is None:
        raise ApiError(404, f"no host {host!r} has joined this manager")
    return obj


def start(m: Manager, who: Principal, host: str) -> dict[str, Any]:
    """Plan, refuse naming every VM that cannot move (nothing changed), else drain (see the module)."""
    if who.role != "admin":
        raise ApiError(403, f"{who.name} ({who.role}) may not drain hosts; that takes an admin token")
    obj = _host(m, host)
    if obj.spec.get("state") in ("draining", "maintenance") and obj.spec.get("drain"):
        return step(m, who, host)  # already draining: carry on
    p = plan(m, host)
    if p.refused:
        raise ApiError(409, f"{host} cannot be drained, nothing was moved and its state is unchanged: "
                            + "; ".join(p.refused) + ". Make room elsewhere (or relax the farm's rules), then "
                            "drain again")
    total = len(p.moves) + len(p.moving)
    m.store.put("host", host, {**obj.spec, "state": "draining", "drain": {"total": total, "at": time.time()}})
    m._event("host", host, "Draining", f"by {who.name}: {total} VM(s) to move: "
             + (", ".join(f"{f}/{i} -> {to}" for f, i, to in p.moves) or "none"))
    m.start()
    answer = step(m, who, host)
    _keep_stepping(m, who, host)
    return answer


def step(m: Manager, who: Principal, host: str) -> dict[str, Any]:
    """Start moves up to PARALLEL; `maintenance` once the host holds nothing. Returns the progress."""
    obj = _host(m, host)
    drain = obj.spec.get("drain")
    if obj.spec.get("state") != "draining" or not drain:
        return progress(m, host)
    p = plan(m, host)
    for farm, instance, to in p.moves[:max(PARALLEL - len(p.moving), 0)]:
        try:
            m.migrate(who, farm, instance, {"to": to})
            m._event("host", host, "DrainMove", f"{farm}/{instance} -> {to}")
        except ApiError as e:  # the world changed since the plan: the next step plans again
            m._event("host", host, "DrainMoveRefused", f"{farm}/{instance} -> {to}: {e}")
    if not p.moves and not p.moving and not p.refused:
        m.store.put("host", host, {**obj.spec, "state": "maintenance"})
        m._event("host", host, "Maintenance", f"drained: all {drain['total']} VM(s) moved; "
                 f"`softudc host undrain {host}` brings it back")
        m.start()
    return progress(m, host)


def progress(m: Manager, host: str) -> dict[str, Any]:
    """{host, state, total, moved, moving, left}: how far a drain is."""
    obj = _host(m, host)
    on = [(o.name, i) for o in m.store.objects("farm") for i in o.status.get("instances", []) if i.get("host") == host]
    total = int(obj.spec.get("drain", {}).get("total", len(on)))
    moving = [f"{f}/{i['name']}" for f, i in on if i.get("migrating")]
    return {"host": host, "state": obj.spec.get("state", "ready"), "total": total,
            "moved": max(total - len(on), 0), "moving": moving, "left": [f"{f}/{i['name']}" for f, i in on]}


def undrain(m: Manager, who: Principal, host: str) -> dict[str, Any]:
    """Back to `ready` (a drain under way stops starting moves; those started finish)."""
    if who.role != "admin":
        raise ApiError(403, f"{who.name} ({who.role}) may not undrain hosts; that takes an admin token")
    obj = _host(m, host)
    before = obj.spec.get("state", "ready")
    spec = {k: v for k, v in obj.spec.items() if k != "drain"}
    m.store.put("host", host, {**spec, "state": "ready"})
    m._event("host", host, "Undrained", f"by {who.name}: {before} -> ready")
    m.start()
    return {"host": host, "state": "ready"}


def _keep_stepping(m: Manager, who: Principal, host: str) -> None:
    def run() -> None:
        until = time.monotonic() + GIVE_UP_S
        while time.monotonic() < until:
            time.sleep(STEP_S)
            try:
                if step(m, who, host)["state"] != "draining":
                    return
            except Exception:  # the store failing now and then: try again at the next step
                log.exception("draining %s: a step failed; trying again in %.0f s", host, STEP_S)

    threading.Thread(target=run, name=f"softudc-drain-{host}", daemon=True).start()
