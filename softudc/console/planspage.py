"""Rebalance plans in the console (admin; softudc/manager/plans.py, as /v1/plans): /console/plans
lists them and previews a new one (a dry run: nothing moves); /console/plans/ID shows its moves,
each with its reason and step, the score before and after, the VMs it could not help, and its
progress; "Approve and run" runs exactly that plan (refused, naming what changed, when the
cluster moved since). The fragment follows the stream's `tasks` and, while it runs, every second."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from softudc.console.actions import checked, refused
from softudc.console.common import manager, view
from softudc.manager import plans
from softudc.manager.apimodels import NAME_PATTERN
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager

router = APIRouter(prefix="/console", include_in_schema=False)
PlanId = Annotated[str, Path(pattern=NAME_PATTERN)]


def plans_context(m: Manager, who: Principal) -> dict[str, Any]:
    return {"plans": plans.listing(m, who)}


def plan_context(m: Manager, who: Principal, pid: str) -> dict[str, Any]:
    p = plans.show(m, who, pid)
    return {"plan": p, "running": p["state"] == "running"}


@router.get("/plans")
def plans_page(request: Request) -> HTMLResponse:
    return view(request, "plans.html", plans_context)


@router.get("/plans/{pid}")
def plan_page(request: Request, pid: PlanId) -> HTMLResponse:
    return view(request, "plan.html", lambda m, who: plan_context(m, who, pid))


@router.get("/fragments/plans/{pid}")
def plan_fragment(request: Request, pid: PlanId) -> HTMLResponse:
    return view(request, "_plan.html", lambda m, who: plan_context(m, who, pid), gone="this plan is gone")


@router.post("/plans")
async def preview(request: Request) -> Response:
    """A dry run: the plan is computed and stored, nothing moves."""
    try:
        _, who, _ = await checked(request)
        made = await run_in_threadpool(plans.create, manager(request), who, {"kind": "rebalance", "dry_run": True})
    except ApiError as e:
        return refused(request, e)
    return RedirectResponse(f"/console/plans/{made['id']}", status_code=303)


@router.post("/plans/{pid}/run")
async def approve(request: Request, pid: PlanId) -> Response:
    """Run exactly this plan (plans.run refuses it, naming what changed, if the cluster moved)."""
    try:
        _, who, _ = await checked(request)
        await run_in_threadpool(plans.run, manager(request), who, pid)
    except ApiError as e:
        return refused(request, e)
    return RedirectResponse(f"/console/plans/{pid}", status_code=303)
