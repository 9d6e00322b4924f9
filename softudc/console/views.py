"""The console's pages: login, hosts, farms, one farm; and the fragments of them that live updates
swap in (`/console/fragments/...`, the same markup the pages include)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from softudc.console.common import current, form, manager, page, sessions
from softudc.console.sessions import COOKIE
from softudc.manager.apimodels import NAME_PATTERN
from softudc.manager.auth import AuthError, Principal
from softudc.manager.service import ApiError, Manager

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


def hosts_context(m: Manager, who: Principal) -> dict[str, Any]:
    hosts = m.list_hosts(who)
    vms: dict[str, list[str]] = {h["name"]: [] for h in hosts}
    for f in m.list_farms(who):
        for i in m.get_farm(who, f["name"])["status"].get("instances", []):
            vms.setdefault(i.get("host", ""), []).append(f"{f['name']}/{i['name']}")
    return {"hosts": hosts, "vms": vms}


@router.get("/")
def hosts_page(request: Request) -> HTMLResponse:
    s, who = current(request)
    return page(request, "hosts.html", who, s, **hosts_context(manager(request), who))


@router.get("/fragments/hosts")
def hosts_fragment(request: Request) -> HTMLResponse:
    s, who = current(request)
    return page(request, "_hosts.html", who, s, **hosts_context(manager(request), who))


@router.get("/farms")
def farms_page(request: Request) -> HTMLResponse:
    s, who = current(request)
    return page(request, "farms.html", who, s, farms=manager(request).list_farms(who))


def farm_context(m: Manager, who: Principal, name: str) -> dict[str, Any]:
    farm = m.get_farm(who, name)
    hosts = [h["name"] for h in m.list_hosts(who)] if who.role == "admin" else []
    return {"farm": farm, "status": farm["status"], "events": farm["events"][-50:][::-1],
            "hosts_names": hosts, "writable": who.can_write(name)}


@router.get("/farms/{name}")
def farm_page(request: Request, name: FarmName) -> HTMLResponse:
    s, who = current(request)
    try:
        ctx = farm_context(manager(request), who, name)
    except ApiError as e:
        return page(request, "missing.html", who, s, code=e.status, message=str(e))
    return page(request, "farm.html", who, s, **ctx)


@router.get("/fragments/farms/{name}")
def farm_fragment(request: Request, name: FarmName) -> HTMLResponse:
    s, who = current(request)
    try:
        ctx = farm_context(manager(request), who, name)
    except ApiError as e:
        return HTMLResponse(f"<p class=error>{e.status}: farm gone</p>", status_code=200)
    return page(request, "_farm.html", who, s, **ctx)
