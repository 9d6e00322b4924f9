"""The console's pages: login, hosts, farms, one farm; and the fragments of them that live updates
swap in (`/console/fragments/...`, the same markup the pages include)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from softudc.console.common import current, form, history, manager, page, sessions, view
from softudc.console.history import LoadHistory, percent, sparkline
from softudc.console.sessions import COOKIE
from softudc.console.topology import layout
from softudc.console.vmpage import farm_def
from softudc.console.volumespage import farm_volumes_context
from softudc.manager import drain
from softudc.manager.apiload import host_loads
from softudc.manager.apimodels import NAME_PATTERN
from softudc.manager.auth import AuthError, Principal
from softudc.manager.service import Manager

router = APIRouter(prefix="/console", include_in_schema=False)
FarmName = Annotated[str, Path(pattern=NAME_PATTERN)]


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return page(request, "login.html", None, None)


@router.post("/login")
async def login(request: Request) -> Response:
    token = (await form(request)).get("token", "")
    try:
        s, _ = await run_in_threadpool(sessions(request).login, token)
    except AuthError as e:
        return page(request, "login.html", None, None, code=401, error=f"refused: {e}")
    r = RedirectResponse("/console/", status_code=303)
    r.set_cookie(COOKIE, s.sid, httponly=True, secure=True, samesite="strict", path="/console")
    return r


@router.post("/logout")
async def logout(request: Request) -> Response:
    s, _ = current(request)
    if not sessions(request).csrf_ok(s, (await form(request)).get("csrf")):
        return HTMLResponse("<p class=error>403: logout refused (no CSRF token); nothing was changed</p>",
                            status_code=403)
    sessions(request).logout(s.sid)
    r = RedirectResponse("/console/login", status_code=303)
    r.delete_cookie(COOKIE, path="/console", httponly=True, secure=True, samesite="strict")
    return r


def hosts_context(m: Manager, who: Principal, hist: LoadHistory) -> dict[str, Any]:
    """The hosts with capacity, VMs, load (bars, and sparklines from `hist`) and, for an admin,
    how far each drain is."""
    hosts = m.list_hosts(who)
    vms: dict[str, list[str]] = {h["name"]: [] for h in hosts}
    for f in m.list_farms(who):
        for i in m.get_farm(who, f["name"])["status"].get("instances", []):
            vms.setdefault(i.get("host", ""), []).append(f"{f['name']}/{i['name']}")
    loads = host_loads(m, who)
    hist.note_hosts(loads)
    by_host = {r["host"]: r for r in loads}
    load = {h["name"]: _host_load(h, by_host.get(h["name"], {}), hist) for h in hosts}
    drains = {h["name"]: drain.progress(m, h["name"]) for h in hosts
              if who.role == "admin" and h["state"] in ("draining", "maintenance")}
    power = {o.name: _power(o.spec, o.spec.get("state", "ready")) for o in m.store.objects("host")} \
        if who.role == "admin" else {}
    return {"hosts": hosts, "vms": vms, "load": load, "drains": drains, "power": power}


def _power(spec: dict[str, Any], state: str) -> str:
    """What the manager knows of a host's power: off (standby, or powered off by its drain) or on
    as far as it reports, and through which driver it could be switched."""
    driver = (spec.get("power") or {}).get("driver") or "no driver"
    off = state == "standby" or (spec.get("drain") or {}).get("power") == "off"
    return f"{'off' if off else 'on'} ({driver})"


def _host_load(h: dict[str, Any], r: dict[str, Any], hist: LoadHistory) -> dict[str, Any]:
    """What a host's row shows of its load: the short-window figures, as a share of its capacity,
    and their recent history as sparkline points."""
    cpu_total, mem_total = h.get("vcpus") or 0, h.get("memory_mib") or 0
    series = hist.series(f"host/{h['name']}")
    cpu, mem = r.get("cpu_cores", {}).get("short"), r.get("memory_mib", {}).get("short")
    return {"cpu": cpu, "mem": mem, "cpu_pct": percent(cpu, cpu_total), "mem_pct": percent(mem, mem_total),
            "age_s": r.get("age_s"), "cpu_line": sparkline([p[1] for p in series], float(cpu_total)),
            "mem_line": sparkline([p[2] for p in series], float(mem_total))}


@router.get("/")
def hosts_page(request: Request) -> HTMLResponse:
    s, who = current(request)
    return page(request, "hosts.html", who, s, **hosts_context(manager(request), who, history(request)))


@router.get("/fragments/hosts")
def hosts_fragment(request: Request) -> HTMLResponse:
    s, who = current(request)
    return page(request, "_hosts.html", who, s, **hosts_context(manager(request), who, history(request)))


@router.get("/farms")
def farms_page(request: Request) -> HTMLResponse:
    s, who = current(request)
    return page(request, "farms.html", who, s, farms=manager(request).list_farms(who))


def farm_context(m: Manager, who: Principal, name: str) -> dict[str, Any]:
    farm = m.get_farm(who, name)
    hosts = [h["name"] for h in m.list_hosts(who)] if who.role == "admin" else []
    fd = farm_def(m, name)
    nics = {v.name: [n.vnet for n in v.nics] for v in fd.vms} if fd else {}
    topo = layout(farm["status"].get("instances", []), list(farm["spec"].get("vnets", [])), nics)
    return {"farm": farm, "status": farm["status"], "events": farm["events"][-50:][::-1],
            "hosts_names": hosts, "writable": who.can_write(name), "topo": topo}


@router.get("/farms/{name}")
def farm_page(request: Request, name: FarmName) -> HTMLResponse:
    return view(request, "farm.html",
                lambda m, who: {**farm_context(m, who, name), **farm_volumes_context(m, who, name)})


@router.get("/fragments/farms/{name}")
def farm_fragment(request: Request, name: FarmName) -> HTMLResponse:
    return view(request, "_farm.html", lambda m, who: farm_context(m, who, name), gone="farm gone")
