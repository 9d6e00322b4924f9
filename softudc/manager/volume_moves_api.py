"""Online volume moves through the manager (issue 13 item 4; softudc/manager/volume_moves.py).

    POST /v1/volumes/{id}/move   {to, limit_mbps | adaptive [, max_latency_inflation_pct]}
                                 -> the move (409 says why not: not remote, not held, VM not running,
                                    destination without room, a move in flight)
    GET  /v1/volumes/{id}/move   -> the move: state requested|copying|ready|pivoted|done|failed,
                                    cur_bytes/end_bytes, rate_bps, speed_bps, latency_inflation_pct
    GET  /v1/volume-moves        -> every recorded move

Moving needs write access to the volume's farm. Reading a move records `done` once the VM's host
has pivoted (and drops done moves the source no longer holds): `softudc volume move` polls it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from softudc.manager import volume_moves
from softudc.manager.apideps import Mgr, Who
from softudc.manager.apimodels import errors
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.volumes import pool_free
from softudc.manager.volumes_api import volume
from softudc.model.hoststate import vm_name
from softudc.model.volume import split_volume_id

router = APIRouter()


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: Annotated[str, Field(min_length=1, max_length=255, description="the destination storage host")]
    limit_mbps: Annotated[int | None, Field(ge=1, le=volume_moves.MAX_LIMIT_MBPS,
                                            description="copy at most this many MB/s")] = None
    adaptive: Annotated[bool, Field(description="as fast as the guest's disk latency allows")] = False
    max_latency_inflation_pct: Annotated[int, Field(ge=1, le=10_000, description="adaptive: the guest's "
                                                    "latency may grow this much over before the copy")] = \
        volume_moves.DEFAULT_INFLATION_PCT


def move_volume(m: Manager, who: Principal, vid: str, req: MoveRequest) -> dict[str, Any]:
    row = volume(m, who, vid)
    if not who.can_write(row["farm"]):
        raise ApiError(403, f"{who.name} ({who.role}) may not change farm {row['farm']!r}")
    farm = m.store.get("farm", row["farm"])
    instances: list[dict[str, Any]] = (farm.status if farm else {}).get("instances", [])
    inst = next((i for i in instances if i["name"] == row["instance"]), {})
    if inst.get("migrating"):
        raise ApiError(409, f"volume {vid}'s VM {row['instance']} is migrating to {inst['migrating'].get('to')}: "
                            "move the volume once it has arrived (libvirt does not copy a disk during a migration)")
    reports = m.reports()
    running = vm_name(row["farm"], row["instance"]) in (reports.get(row["vm_host"] or "") or {}).get("running", [])
    move = volume_moves.request(m.store, row, req.to, req.limit_mbps, req.adaptive, req.max_latency_inflation_pct,
                                pool_free(reports), reports, running)
    return volume_moves.status(move, reports)


def move_of(m: Manager, who: Principal, vid: str) -> dict[str, Any]:
    ids = split_volume_id(vid)
    if ids is None or not who.can_read(ids[0]):
        raise ApiError(404, f"no move of {vid!r}: not a farm volume you may read (`softudc volume list`)")
    moves, reports = volume_moves.records(m.store), m.reports()
    volume_moves.finish(m.store, moves, reports)
    obj = m.store.get(volume_moves.KIND, vid)
    if obj is None or obj.deleted:
        raise ApiError(404, f"volume {vid} has no move recorded (moved long ago, or never): "
                            f"`softudc volume move {vid} --to HOST` starts one")
    return volume_moves.status(volume_moves.from_obj(obj), reports)


def all_moves(m: Manager, who: Principal) -> list[dict[str, Any]]:
    moves, reports = volume_moves.records(m.store), m.reports()
    volume_moves.finish(m.store, moves, reports)
    return [volume_moves.status(mv, reports) for vid, mv in sorted(moves.items())
            if (ids := split_volume_id(vid)) is not None and who.can_read(ids[0])]


@router.post("/v1/volumes/{vid}/move", summary="Move a remote volume to another storage host while its VM runs",
             responses=errors(400, 401, 403, 404, 409))
def post_move(m: Mgr, who: Who, vid: str, req: MoveRequest) -> dict[str, Any]:
    return move_volume(m, who, vid, req)


@router.get("/v1/volumes/{vid}/move", summary="A volume's move: state, bytes copied, rate",
            responses=errors(401, 404))
def get_move(m: Mgr, who: Who, vid: str) -> dict[str, Any]:
    return move_of(m, who, vid)


@router.get("/v1/volume-moves", summary="Every recorded volume move", responses=errors(401))
def get_moves(m: Mgr, who: Who) -> list[dict[str, Any]]:
    return all_moves(m, who)
