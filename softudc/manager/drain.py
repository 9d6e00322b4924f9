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

`power_off` (`softudc host drain H --power-off`): once in `maintenance`, the drain's thread powers
the host off through its power driver, confirmed off (softudc/power/fence.py), and lights its
identify LED (IDENTIFY_S) so someone finds it in the rack; the host stays in `maintenance`, its drain
record says `power: off` (or `failed` and why: a POST of the drain tries again). `undrain` of a host
powered off powers it on, puts the LED out, and waits until it reports (REJOIN_S) before `ready`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from softudc.manager.auth import Principal
from softudc.manager.controller import inventory
from softudc.manager.errors import ApiError
from softudc.manager.farms import FARMS, Usage
from softudc.manager.planner import Instance, move_fit
from softudc.model.farm import Farm
from softudc.power.driver import PowerDriver, PowerError
from softudc.power.factory import driver_for
from softudc.power.fence import fence

if TYPE_CHECKING:
    from softudc.manager.service import Manager

log = logging.getLogger("softudc.manager.drain")

PARALLEL = 2  # migrations a drain runs at once
STEP_S = 2.0  # how often the drain's thread steps
GIVE_UP_S = 3600.0  # a drain's thread stops after this long (a POST of the route resumes it)
OFF_TIMEOUT_S = 60.0  # power off: confirmed off within this long
IDENTIFY_S = 255  # the identify LED after a power off (IPMI's longest; `softudc host power H identify` again)
REJOIN_S = 300.0  # undrain: the host powered on must report within this long


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


def start(m: Manager, who: Principal, host: str, power_off: bool = False) -> dict[str, Any]:
    """Plan, refuse naming every VM that cannot move (nothing changed), else drain (see the module)."""
    if who.role != "admin":
        raise ApiError(403, f"{who.name} ({who.role}) may not drain hosts; that takes an admin token")
    obj = _host(m, host)
    if power_off:
        _driver(m, obj.name, obj.spec)  # no power config: refused before anything moves
    if obj.spec.get("state") in ("draining", "maintenance") and obj.spec.get("drain"):
        return _again(m, who, obj, power_off)  # already draining: carry on
    p = plan(m, host)
    if p.refused:
        raise ApiError(409, f"{host} cannot be drained, nothing was moved and its state is unchanged: "
                            + "; ".join(p.refused) + ". Make room elsewhere (or relax the farm's rules), then "
                            "drain again")
    total = len(p.moves) + len(p.moving)
    record = {"total": total, "at": time.time(), **({"power_off": True} if power_off else {})}
    m.store.put("host", host, {**obj.spec, "state": "draining", "drain": record})
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
    """{host, state, total, moved, moving, left}, and with --power-off {power_off, power (off|failed|
    starting), power_reason}: how far a drain is."""
    obj = _host(m, host)
    on = [(o.name, i) for o in m.store.objects("farm") for i in o.status.get("instances", []) if i.get("host") == host]
    record = obj.spec.get("drain") or {}
    total = int(record.get("total", len(on)))
    moving = [f"{f}/{i['name']}" for f, i in on if i.get("migrating")]
    power = {k: record[k] for k in ("power_off", "power", "power_reason") if k in record}
    return {"host": host, "state": obj.spec.get("state", "ready"), "total": total,
            "moved": max(total - len(on), 0), "moving": moving, "left": [f"{f}/{i['name']}" for f, i in on], **power}


def undrain(m: Manager, who: Principal, host: str) -> dict[str, Any]:
    """Back to `ready` (a drain under way stops starting moves; those started finish). A host its
    drain powered off is powered on first, in a thread: `ready` once it reports (progress says
    `power: starting` meanwhile; `failed` and why, still in maintenance, if it does not)."""
    if who.role != "admin":
        raise ApiError(403, f"{who.name} ({who.role}) may not undrain hosts; that takes an admin token")
    obj = _host(m, host)
    before = obj.spec.get("state", "ready")
    if (obj.spec.get("drain") or {}).get("power") in ("off", "starting", "on failed"):
        driver = _driver(m, host, obj.spec)
        _set_drain(m, host, power="starting", power_reason=f"powering on through {driver.name}")
        _in_thread(f"softudc-undrain-{host}", lambda: _power_on_then_ready(m, who, host, driver))
        return {**progress(m, host), "state": before, "power": "starting"}
    _ready(m, who, host)
    return {"host": host, "state": "ready"}


def _ready(m: Manager, who: Principal, host: str, why: str = "") -> None:
    obj = _host(m, host)
    before = obj.spec.get("state", "ready")
    spec = {k: v for k, v in obj.spec.items() if k != "drain"}
    m.store.put("host", host, {**spec, "state": "ready"})
    m._event("host", host, "Undrained", f"by {who.name}: {before} -> ready{why}")
    m.start()


def _power_on_then_ready(m: Manager, who: Principal, host: str, driver: PowerDriver) -> None:
    since = time.time()
    try:
        driver.on()
        seconds = wait_reported(m, host, since, REJOIN_S)
    except PowerError as e:
        _set_drain(m, host, power="on failed", power_reason=str(e))
        m._event("host", host, "UndrainFailed", f"{e}; still in maintenance: `softudc host undrain {host}` "
                                                "tries again")
        return
    with contextlib.suppress(PowerError):
        driver.identify(0)  # found: the LED goes out
    _ready(m, who, host, f" (powered on through {driver.name}; reported {seconds:.1f} s later)")


def wait_reported(m: Manager, host: str, since: float, timeout: float,
                  sleep: Callable[[float], None] = time.sleep) -> float:
    """Seconds until `host` reported after `since` (epoch) and is not `down`; a PowerError after `timeout`."""
    start = time.monotonic()
    while True:
        r = m.reports().get(host, {})
        if float(r.get("reported", 0)) > since and r.get("state") != "down":
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise PowerError(f"{host} did not report within {timeout:g} s of being powered on; see its gatekeeper "
                             f"log and `softudc host power {host} status`")
        sleep(0.5)


def _driver(m: Manager, host: str, spec: dict[str, Any]) -> PowerDriver:
    config = spec.get("power")
    if config is None:
        raise ApiError(409, f"{host} has no power config, so it cannot be powered off or on; set one: softudc host "
                            f"power-config {host} -f FILE (docs/power.md); nothing was changed")
    try:
        made: PowerDriver = (vars(m).get("power_drivers") or driver_for)(config)
    except PowerError as e:
        raise ApiError(409, f"{host}: stored {e}; set a valid one (docs/power.md); nothing was changed") from None
    return made


def _set_drain(m: Manager, host: str, **fields: Any) -> None:
    obj = _host(m, host)
    m.store.put("host", host, {**obj.spec, "drain": {**(obj.spec.get("drain") or {}), **fields}})


def power_off(m: Manager, who: Principal, host: str) -> dict[str, Any]:
    """A drained host that asked for it (`power_off`) powered off, confirmed, its identify LED lit."""
    obj = _host(m, host)
    record = obj.spec.get("drain") or {}
    if obj.spec.get("state") != "maintenance" or not record.get("power_off") or record.get("power") == "off":
        return progress(m, host)
    try:
        driver = _driver(m, host, obj.spec)
        if progress(m, host)["left"]:
            raise PowerError(f"instances are placed on it again: {', '.join(progress(m, host)['left'])}")
        fenced = fence(driver, timeout=OFF_TIMEOUT_S)
        if not fenced.confirmed:
            raise PowerError(fenced.reason)
    except (PowerError, ApiError) as e:
        _set_drain(m, host, power="failed", power_reason=str(e))
        m._event("host", host, "PowerOffFailed", f"{e}; it stays in maintenance, powered on: `softudc host drain "
                                                 f"{host} --power-off` tries again")
        return progress(m, host)
    try:
        driver.identify(IDENTIFY_S)
        lit = f"identify LED lit for {IDENTIFY_S} s"
    except PowerError as e:
        lit = f"identify LED not lit: {e}"
    _set_drain(m, host, power="off", power_reason=f"{fenced.reason}; {lit}")
    m._event("host", host, "PoweredOff", f"by {who.name} after its drain: {fenced.reason} in {fenced.seconds:.1f} s; "
                                         f"{lit}; `softudc host undrain {host}` powers it on")
    return progress(m, host)


def _again(m: Manager, who: Principal, obj: Any, power_off_too: bool) -> dict[str, Any]:
    """A drain asked for again: one more step; power off too if asked now or before and not done."""
    if power_off_too and not (obj.spec.get("drain") or {}).get("power_off"):
        _set_drain(m, obj.name, power_off=True)
    answer = step(m, who, obj.name)
    if answer["state"] == "maintenance" and answer.get("power_off") and answer.get("power") != "off":
        _in_thread(f"softudc-drain-off-{obj.name}", lambda: power_off(m, who, obj.name))
    return answer


def _in_thread(name: str, fn: Callable[[], object]) -> None:
    def run() -> None:
        try:
            fn()
        except Exception:  # the store failing: logged; the operator's next request tries again
            log.exception("%s failed", name)

    threading.Thread(target=run, name=name, daemon=True).start()


def _keep_stepping(m: Manager, who: Principal, host: str) -> None:
    def run() -> None:
        until = time.monotonic() + GIVE_UP_S
        while time.monotonic() < until:
            time.sleep(STEP_S)
            try:
                state = step(m, who, host)["state"]
                if state == "maintenance":
                    power_off(m, who, host)  # if asked for (--power-off)
                if state != "draining":
                    return
            except Exception:  # the store failing now and then: try again at the next step
                log.exception("draining %s: a step failed; trying again in %.0f s", host, STEP_S)

    threading.Thread(target=run, name=f"softudc-drain-{host}", daemon=True).start()
