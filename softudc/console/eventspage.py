"""The event log, /console/events: farms', hosts' and managers' events, newest first, filtered by
kind, object name and type (a case-insensitive part of it); read through the Manager's
list_events, so a viewer sees its farms' only. The table refreshes as the store changes."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from softudc.console.common import current, manager, page
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager

router = APIRouter(prefix="/console", include_in_schema=False)
READ = 1000  # events read before the type filter (the API's most)
SHOWN = 200


def events_context(m: Manager, who: Principal, kind: str, name: str, type_: str) -> dict[str, Any]:
    """The events matching the filter; ApiError 400/403/404 as GET /v1/events answers."""
    query = {"limit": str(READ), **({"kind": kind} if kind else {}), **({"name": name} if name else {})}
    found = m.list_events(who, query)
    types = sorted({str(e.get("type", "")) for e in found})
    want = type_.strip().lower()
    shown = [e for e in found if want in str(e.get("type", "")).lower()][-SHOWN:][::-1]
    return {"events": shown, "types": types, "kind": kind, "name": name, "type": type_,
            "query": urlencode({k: v for k, v in (("kind", kind), ("name", name), ("type", type_)) if v})}


def _render(request: Request, template: str, kind: str, name: str, type: str) -> HTMLResponse:
    s, who = current(request)
    try:
        ctx = events_context(manager(request), who, kind, name, type)
    except ApiError as e:
        ctx = {"events": [], "types": [], "kind": kind, "name": name, "type": type, "query": "",
               "error": f"{e.status}: {e}"}
    return page(request, template, who, s, **ctx)


@router.get("/events")
def events_page(request: Request, kind: str = "", name: str = "", type: str = "") -> HTMLResponse:
    return _render(request, "events.html", kind, name, type)


@router.get("/fragments/events")
def events_fragment(request: Request, kind: str = "", name: str = "", type: str = "") -> HTMLResponse:
    return _render(request, "_events.html", kind, name, type)
