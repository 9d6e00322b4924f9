"""Rebalance plans (issue 12 item 3; softudc/manager/plans.py), admin only (a plan names every farm's VMs):

    POST /v1/plans            {kind: rebalance, dry_run: true, cooldown_s, max_per_source, max_per_destination,
                               max_per_step, max_moves}: compute and store a plan (run at once if dry_run is false)
    GET  /v1/plans            every plan, newest first (without its moves)
    GET  /v1/plans/{id}       the plan: moves with reason, step and state; score and breakdown before/after; progress
    GET  /v1/plans/{id}/events  its events (Planned, Running, Move, MoveDone, MoveFailed, Failed, Done), oldest first
    POST /v1/plans/{id}/run   run exactly that plan (409 naming what changed if the cluster's fingerprint differs)
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, ConfigDict, Field

from softudc.manager import plans
from softudc.manager.apideps import Mgr, Who
from softudc.manager.apimodels import NAME_PATTERN, errors

PlanId = Annotated[str, Path(pattern=NAME_PATTERN, description="a plan's id")]

router = APIRouter()


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "rebalance"
    dry_run: bool = True
    cooldown_s: float | None = Field(None, ge=0)
    max_per_source: int | None = Field(None, ge=1)
    max_per_destination: int | None = Field(None, ge=1)
    max_per_step: int | None = Field(None, ge=1)
    max_moves: int | None = Field(None, ge=1)


@router.post("/v1/plans", summary="Compute (and store) a rebalance plan; dry_run false: run it at once (admin)",
             responses=errors(400, 401, 403, 409))
def create_plan(m: Mgr, who: Who, body: Annotated[PlanRequest | None, Body()] = None) -> dict[str, Any]:
    given = body.model_dump(exclude_none=True) if body else {}
    return plans.create(m, who, given)


@router.get("/v1/plans", summary="Every stored plan, newest first (admin)", responses=errors(401, 403))
def list_plans(m: Mgr, who: Who) -> list[dict[str, Any]]:
    return plans.listing(m, who)


@router.get("/v1/plans/{pid}", summary="A plan: its moves, scores and progress (admin)",
            responses=errors(401, 403, 404))
def get_plan(m: Mgr, who: Who, pid: PlanId) -> dict[str, Any]:
    return plans.show(m, who, pid)


@router.get("/v1/plans/{pid}/events", summary="A plan's events, oldest first (admin)",
            responses=errors(401, 403, 404))
def plan_events(m: Mgr, who: Who, pid: PlanId) -> list[dict[str, Any]]:
    return plans.events(m, who, pid)


@router.post("/v1/plans/{pid}/run", summary="Run exactly this plan; 409 if the cluster changed since (admin)",
             responses=errors(401, 403, 404, 409))
def run_plan(m: Mgr, who: Who, pid: PlanId) -> dict[str, Any]:
    return plans.run(m, who, pid)
