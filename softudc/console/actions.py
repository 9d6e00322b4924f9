"""The console's actions (admins only; the Manager checks the role again): apply a descriptor,
migrate a VM, delete a farm, drain and undrain a host (softudc/manager/drain.py, as the API).
Every form carries the session's CSRF token; the cookie is SameSite=Strict besides. A refused
action changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from softudc.console.common import current, form, manager, page, sessions
from softudc.console.editor import annotate
from softudc.console.sessions import Session
from softudc.manager import drain
from softudc.manager.apimodels import INSTANCE_PATTERN, NAME_PATTERN
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager

router = APIRouter(prefix="/console", include_in_schema=False)
FarmName = Annotated[str, Path(pattern=NAME_PATTERN)]
Instance = Annotated[str, Path(pattern=INSTANCE_PATTERN)]
FORBIDDEN = "refused: a console action needs an admin session and the form's CSRF token"


async def checked(request: Request) -> tuple[Session, Principal, dict[str, str]]:
    """The session, principal and form of an action; ApiError 403 unless an admin sent the
    session's CSRF token."""
    s, who = current(request)
    fields = await form(request)
    if who.role != "admin" or not sessions(request).csrf_ok(s, fields.get("csrf")):
        raise ApiError(403, FORBIDDEN)
    return s, who, fields


def refused(request: Request, e: ApiError) -> HTMLResponse:
    return HTMLResponse(f"<p class=error>{e.status}: action refused, nothing was changed</p>",
                        status_code=e.status) if e.status == 403 else page(
        request, "missing.html", None, None, code=e.status, message=str(e),
        heading="Not found" if e.status == 404 else "Refused: nothing was changed")


@router.get("/apply")
def apply_page(request: Request, farm: str = "") -> HTMLResponse:
    s, who = current(request)
    text = ""
    if farm:
        try:
            text = manager(request).get_farm(who, farm)["spec"].get("descriptor", "")
        except ApiError:
            farm = ""
    return page(request, "apply.html", who, s, name=farm, text=text, lines=[], loose=[])


@router.post("/apply")
async def apply(request: Request) -> Response:
    try:
        s, who, fields = await checked(request)
    except ApiError as e:
        return refused(request, e)
    name, text = fields.get("name", "").strip(), fields.get("descriptor", "").replace("\r\n", "\n")
    try:
        await run_in_threadpool(manager(request).put_farm, who, name, text, None)
    except ApiError as e:
        problems = [str(p) for p in e.extra.get("problems", [])] or [str(e)]
        lines, loose = annotate(text, problems)
        return page(request, "apply.html", who, s, code=e.status, name=name, text=text, lines=lines,
                    loose=loose, error=str(e))
    return RedirectResponse(f"/console/farms/{name}", status_code=303)


@router.post("/farms/{name}/delete")
async def delete(request: Request, name: FarmName) -> Response:
    try:
        _, who, fields = await checked(request)
        if fields.get("confirm") != name:
            raise ApiError(400, f"to delete farm {name!r}, tick the box that names it")
        await run_in_threadpool(manager(request).delete_farm, who, name)
    except ApiError as e:
        return refused(request, e)
    return RedirectResponse("/console/farms", status_code=303)


@router.post("/farms/{name}/instances/{instance}/migrate")
async def migrate(request: Request, name: FarmName, instance: Instance) -> Response:
    try:
        _, who, fields = await checked(request)
        await run_in_threadpool(manager(request).migrate, who, name, instance, {"to": fields.get("host", "")})
    except ApiError as e:
        return refused(request, e)
    vm_page = f"/console/farms/{name}/vms/{instance}"  # the page the form was on: back there
    return RedirectResponse(vm_page if fields.get("back") == vm_page else f"/console/farms/{name}", status_code=303)


@router.post("/hosts/{name}/drain")
async def drain_host(request: Request, name: FarmName) -> Response:
    """As POST /v1/hosts/NAME/drain: refused whole (409, naming each VM that cannot move; nothing
    changed) or started; the hosts page then shows how far it is."""
    return await _on_host(request, name, drain.start)


@router.post("/hosts/{name}/undrain")
async def undrain_host(request: Request, name: FarmName) -> Response:
    return await _on_host(request, name, drain.undrain)


async def _on_host(request: Request, name: str, action: Callable[[Manager, Principal, str], object]) -> Response:
    try:
        _, who, _ = await checked(request)
        await run_in_threadpool(action, manager(request), who, name)
    except ApiError as e:
        return refused(request, e)
    return RedirectResponse("/console/", status_code=303)
