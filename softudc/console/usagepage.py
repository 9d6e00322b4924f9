"""What each farm and VM used, /console/usage (GET /v1/usage through the same function,
softudc/manager/apiusage.py): CPU-seconds, memory GiB-hours, bytes per VNET in and out, for all
time or from N hours ago; the farms the session may read only. Refreshed with the hosts' reports."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from softudc.console.common import view
from softudc.manager.apiusage import usage
from softudc.manager.auth import Principal
from softudc.manager.service import Manager

router = APIRouter(prefix="/console", include_in_schema=False)
WINDOWS = {"": "all time", "1": "the last hour", "24": "the last day", "168": "the last week"}


def usage_context(m: Manager, who: Principal, farm: str, hours: str) -> dict[str, Any]:
    """The usage table; an unknown window is all time, a farm `who` may not read a 403 (ApiError)."""
    hours = hours if hours in WINDOWS else ""
    since = time.time() - 3600 * int(hours) if hours else None
    got = usage(m, who, farm or None, since)
    names = {int(vid): v for o in m.store.objects("farm") if who.can_read(o.name)
             for v, vid in o.status.get("vnet_ids", {}).items()}
    return {"farms": got["farms"], "note": got.get("volume_gib_hours", ""), "farm": farm, "hours": hours,
            "windows": WINDOWS, "vnet_names": names}


@router.get("/usage")
def usage_page(request: Request, farm: str = "", hours: str = "") -> HTMLResponse:
    return view(request, "usage.html", lambda m, who: usage_context(m, who, farm, hours))


@router.get("/fragments/usage")
def usage_fragment(request: Request, farm: str = "", hours: str = "") -> HTMLResponse:
    return view(request, "_usage.html", lambda m, who: usage_context(m, who, farm, hours), gone="usage refused")
