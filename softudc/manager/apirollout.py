"""Rolling host maintenance through the manager (admin; softudc/manager/rollout.py):

    POST /v1/rollouts          {"name": "r1", "hosts": "h1,h2,h*|all", "script": "#!/bin/sh ...",
                                "script_name": "upgrade.sh", "max_unavailable": 1,
                                "drain_s": 900, "script_s": 600, "rejoin_s": 300}
    GET  /v1/rollouts          every rollout (newest last), without the scripts' text
    GET  /v1/rollouts/{name}   one: state, reason, each host's phase, since when and why
    POST /v1/rollouts/{name}/stop   no further phase starts; hosts under way end their current one

A rollout that cannot start (a selector naming no host, a host without a power config, another
rollout still running) is refused, and nothing is stored.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from softudc.manager import rollout
from softudc.manager.apideps import Mgr, admin_only
from softudc.manager.apimodels import NAME_PATTERN, errors
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError

_admin = admin_only("upgrade hosts")
Admin = Annotated[Principal, Depends(_admin)]
RolloutName = Annotated[str, Path(pattern=NAME_PATTERN, description="a rollout")]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str | None, Field(pattern=NAME_PATTERN, description="default: rollout-<time>")] = None
    hosts: Annotated[str, Field(min_length=1, max_length=1000, description="h1,h2 | globs (h*) | all")]
    script: Annotated[str, Field(min_length=1, max_length=rollout.SCRIPT_MAX,
                                 description="run as `SCRIPT HOST ADDRESS` (SOFTUDC_HOST, SOFTUDC_HOST_ADDRESS)")]
    script_name: Annotated[str, Field(min_length=1, max_length=200)] = "script"
    max_unavailable: Annotated[int, Field(ge=1, le=1000, description="hosts out of service at once")] = 1
    drain_s: Seconds = rollout.TIMEOUTS["drain_s"]
    script_s: Seconds = rollout.TIMEOUTS["script_s"]
    rejoin_s: Seconds = rollout.TIMEOUTS["rejoin_s"]


router = APIRouter()


@router.post("/v1/rollouts", summary="Start a rolling host maintenance: drain, script, power-cycle, rejoin, undrain "
             "(admin)", responses=errors(400, 401, 403, 409))
def post_rollout(m: Mgr, who: Admin, body: RolloutRequest) -> Any:
    name = body.name or time.strftime("rollout-%Y%m%d-%H%M%S", time.gmtime())
    return rollout.create(m, who, name, body.hosts, body.script, body.script_name, body.max_unavailable,
                          {"drain_s": body.drain_s, "script_s": body.script_s, "rejoin_s": body.rejoin_s})


@router.get("/v1/rollouts", summary="Every rollout, oldest first (admin)", responses=errors(401, 403))
def list_rollouts(m: Mgr, who: Admin) -> Any:
    return sorted((rollout.summary(o) for o in m.store.objects(rollout.KIND)), key=lambda r: r["created"])


@router.get("/v1/rollouts/{name}", summary="One rollout: its state and each host's phase (admin)",
            responses=errors(401, 403, 404))
def get_rollout(m: Mgr, who: Admin, name: RolloutName) -> Any:
    obj = m.store.get(rollout.KIND, name)
    if obj is None:
        raise ApiError(404, f"no rollout {name!r} (see `softudc host upgrade-status`)")
    return rollout.summary(obj)


@router.post("/v1/rollouts/{name}/stop", summary="Stop a rollout: no further phase starts (admin)",
             responses=errors(401, 403, 404, 409))
def stop_rollout(m: Mgr, who: Admin, name: RolloutName) -> Any:
    return rollout.stop(m, who, name)
