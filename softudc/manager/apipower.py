"""Host power through the manager (admin): each host's power config, and power commands run
through its driver (softudc/power).

    PUT  /v1/hosts/{name}/power-config   {"driver": "ipmi", "address": ..., "password_file": ...}
    GET  /v1/hosts/{name}/power-config
    POST /v1/hosts/{name}/power          {"action": "on|off|cycle|status|identify|fence", "seconds": 15,
                                          "force": false, "timeout": 30}

The config is stored in the host's spec (`power`); one with a password in it is refused (the
password stays in the file `password_file` names, on the manager's machine). Powering a host off
puts it in `standby`: placement skips it, and the manager does not call it `down` for its missing
reports. Powering it on (or a cycle) brings a standby host back to `ready`. Off and cycle are
refused while instances are placed on the host, unless forced: drain it first
(`softudc host state H draining`, then move its VMs).

`fence` is for a host that stopped answering (`down`; anything else needs force): power off and
confirm it off (softudc/power/fence.py), then `standby`; unconfirmed, it is a 424 saying why and
the host's state is left alone — nothing it ran may be started elsewhere on the strength of it.
A driver failure is a 424, not a 5xx: a client of a manager group retries a 5xx on the next
manager, which would run the command twice.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from softudc.manager.apideps import Mgr, admin_only
from softudc.manager.apimodels import NAME_PATTERN, errors
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.harestart import note_fenced
from softudc.manager.service import Manager
from softudc.manager.store import Obj
from softudc.power.driver import PowerDriver, PowerError
from softudc.power.factory import check_config, driver_for
from softudc.power.fence import fence

STANDBY = "standby"

_admin = admin_only("power hosts")
Admin = Annotated[Principal, Depends(_admin)]
HostName = Annotated[str, Path(pattern=NAME_PATTERN, description="a host")]


class PowerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["on", "off", "cycle", "status", "identify", "fence"]
    seconds: Annotated[int, Field(ge=0, le=255, description="identify: how long the LED is lit (0: off)")] = 15
    force: Annotated[bool, Field(description="off/cycle: even with instances placed on the host; fence: even "
                                             "a host that is not down")] = False
    timeout: Annotated[float, Field(gt=0, le=300, description="fence: seconds to confirm the host off")] = 30.0


class PowerAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    host: str
    action: str
    power: Annotated[Literal["on", "off"] | None, Field(description="status: what the driver says")] = None
    state: Annotated[str, Field(description="the host's state after the command (standby once powered off)")]


router = APIRouter()


def _host(m: Manager, name: str) -> Obj:
    obj = m.store.get("host", name)
    if obj is None:
        raise ApiError(404, f"no host {name!r} has joined this manager (see `softudc host list`)")
    return obj


def _driver(obj: Obj) -> PowerDriver:
    config = obj.spec.get("power")
    if config is None:
        raise ApiError(409, f"{obj.name} has no power config; set one: softudc host power-config {obj.name} -f FILE "
                            "(docs/power.md)")
    try:
        return driver_for(config)
    except PowerError as e:
        raise ApiError(409, f"{obj.name}: stored {e}; set a valid one (docs/power.md)") from None


def placed_on(m: Manager, name: str) -> list[str]:
    return sorted(f"{o.name}/{i['name']}" for o in m.store.objects("farm")
                  for i in o.status.get("instances", []) if i.get("host") == name)


def _set_state(m: Manager, name: str, state: str, who: Principal, why: str, only_from: str | None = None) -> None:
    obj = _host(m, name)  # read again: the driver call took a while
    before = obj.spec.get("state", "ready")
    if before != state and only_from in (None, before):
        m.store.put("host", name, {**obj.spec, "state": state})
        m._event("host", name, "State", f"by {who.name}: {before} -> {state} ({why})")


def _refuse_unless_forced(m: Manager, obj: Obj, req: PowerRequest) -> list[str]:
    """The instances a command would stop; a 409 unless forced (off/cycle with instances placed,
    fence of a host that is not down)."""
    placed = placed_on(m, obj.name) if req.action in ("off", "cycle", "fence") else []
    if req.force:
        return placed
    if req.action == "fence" and m.reports().get(obj.name, {}).get("state") != "down":
        raise ApiError(409, f"{obj.name} is not down (it still reports): fencing is for a host that stopped "
                            "answering; to power a live host off use `off` (after draining it), or force")
    if placed and req.action != "fence":
        raise ApiError(409, f"{obj.name} still has {len(placed)} instance(s): {', '.join(placed)}; powering it "
                            f"{req.action} stops them. Drain it first, or force", instances=placed)
    return placed


def _run(m: Manager, who: Principal, obj: Obj, driver: PowerDriver, req: PowerRequest) -> dict[str, Any]:
    """The driver call; what it says (status, fence's outcome). A failure: 424 and an event."""
    out: dict[str, Any] = {}
    try:
        if req.action == "status":
            out["power"] = driver.status()
        elif req.action == "identify":
            driver.identify(req.seconds)
        elif req.action == "fence":
            fenced = fence(driver, timeout=req.timeout)
            out = {"confirmed": fenced.confirmed, "reason": fenced.reason, "seconds": round(fenced.seconds, 3)}
            if not fenced.confirmed:
                raise PowerError(fenced.reason)
        else:
            getattr(driver, req.action)()
    except PowerError as e:
        m._event("host", obj.name, "PowerFailed", f"by {who.name}: {req.action}: {e}")
        raise ApiError(424, str(e), **out) from None  # not 5xx: clients would retry on another manager
    return out


def power(m: Manager, who: Principal, name: str, req: PowerRequest) -> dict[str, Any]:
    """Run one power command on host `name` through its driver; the host's state follows."""
    obj = _host(m, name)
    driver = _driver(obj)
    placed = _refuse_unless_forced(m, obj, req)
    answer = {"host": name, "action": req.action, **_run(m, who, obj, driver, req)}
    if req.action in ("off", "fence"):
        _set_state(m, name, STANDBY, who, f"powered off through {driver.name}" +
                   (" (fenced: confirmed off)" if req.action == "fence" else ""))
    elif req.action in ("on", "cycle"):
        _set_state(m, name, "ready", who, f"powered {req.action} through {driver.name}", only_from=STANDBY)
    if req.action == "fence":  # its instances may now restart elsewhere, as after the leader's own fence
        why = answer.get("reason") or "confirmed off"
        note_fenced(m.store, name, f"fenced by {who.name} through {driver.name}: {why}")
    if req.action != "status":
        m._event("host", name, "Power", f"by {who.name}: {req.action}" +
                 (f" {req.seconds} s" if req.action == "identify" else "") + f" through {driver.name}" +
                 (f"; instances stopped with it: {', '.join(placed)}" if placed else ""))
        m.start()
    return {**answer, "state": (m.store.get("host", name) or obj).spec.get("state", "ready")}


def set_power_config(m: Manager, who: Principal, name: str, config: Any) -> dict[str, Any]:
    obj = _host(m, name)
    try:
        check_config(config)
    except PowerError as e:
        raise ApiError(400, f"{e}; nothing stored") from None
    m.store.put("host", name, {**obj.spec, "power": config})
    m._event("host", name, "PowerConfig", f"by {who.name}: driver {config['driver']}")
    return {"host": name, "power": config}


@router.post("/v1/hosts/{name}/power", summary="Power a host on, off, cycle it, its status, identify, fence (admin)",
             response_model=PowerAnswer, responses=errors(400, 401, 403, 404, 409, 424))
def post_power(m: Mgr, who: Admin, name: HostName, body: PowerRequest) -> Any:
    return power(m, who, name, body)


@router.put("/v1/hosts/{name}/power-config", summary="Set a host's power driver config (admin; no password in it)",
            responses=errors(400, 401, 403, 404))
def put_power_config(m: Mgr, who: Admin, name: HostName,
                     config: Annotated[dict[str, Any], Body(description="the power config (docs/power.md)")]) -> Any:
    return set_power_config(m, who, name, config)


@router.get("/v1/hosts/{name}/power-config", summary="A host's power driver config (admin)",
            responses=errors(401, 403, 404))
def get_power_config(m: Mgr, who: Admin, name: HostName) -> Any:
    return {"host": name, "power": _host(m, name).spec.get("power")}
