"""Usage accounting (issue 15), for `softudc usage` and the console.

    GET /v1/usage[?farm=F][&since=T]   {since, farms: [{farm, cpu_seconds, memory_gib_hours,
                                        volume_gib_hours, network: [{vnet, rx_bytes, tx_bytes}],
                                        vms: [{vm, ...the same figures}]}], volume_gib_hours: note}

T: Unix seconds; figures from the hour T falls in (softudc/manager/usage.py keeps hourly figures for
62 days, totals forever). From every host's written book and this manager's unwritten ones. Admins
see every farm, others the farms they may read (a farm they may not read: 403).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from softudc.manager.apideps import Mgr, Who
from softudc.manager.apimodels import errors
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.usage import report, usage_of

router = APIRouter()


def usage(m: Manager, who: Principal, farm: str | None = None, since: float | None = None) -> dict[str, Any]:
    """GET /v1/usage's answer."""
    if farm is not None and not who.can_read(farm):
        raise ApiError(403, f"{who.name} ({who.role}) may not read farm {farm!r}")
    totals = usage_of(m.store, extra=m.usage.latest(), since=since)
    out = report(totals, lambda f: who.can_read(f) and (farm is None or f == farm))
    return {"since": since, **out}


@router.get("/v1/usage", summary="What each farm and VM used: CPU-seconds, memory GiB-hours, bytes per VNET",
            responses=errors(401, 403))
def get_usage(m: Mgr, who: Who,
              farm: Annotated[str | None, Query(max_length=255, description="only this farm")] = None,
              since: Annotated[float | None, Query(ge=0, description="Unix seconds, from its hour")] = None) \
        -> dict[str, Any]:
    return usage(m, who, farm, since)
