"""Volumes as objects through the manager (issue 13 item 3; softudc/manager/volume_objects.py).

    POST /v1/volumes                     {name, size_bytes | from, host, master}: a standalone
                                         volume, empty or a clone of `from` (VOLUME@SNAP or a master)
    POST /v1/volumes/{name}/snapshots    {snapshot}: a snapshot of a farm's or a standalone volume
    DELETE /v1/volumes/{name}            a standalone volume with its snapshots, a snapshot, or a
                                         kept volume no farm wants (a farm's: volumes_api's 409)
    GET /v1/volumes[/{name}]             the farms' volumes (volumes_api) and these beside them

This router is included before volumes_api's: its GET and DELETE routes answer for the volume
objects and hand the farms' volumes to volumes_api.

Standalone volumes belong to no farm: admins make and delete them. A farm volume's snapshot needs
write access to its farm. Each change wakes the storage host's long poll.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from softudc.manager import volume_objects as vo
from softudc.manager import volumes_api
from softudc.manager.apideps import Mgr, Who
from softudc.manager.apimodels import errors
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.volumes import VolumeView, held, pool_free
from softudc.model.volume import backing_name, split_volume_id

router = APIRouter()


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, Field(min_length=1, max_length=40)]
    size_bytes: Annotated[int | None, Field(ge=1 << 20, le=vo.MAX_SIZE)] = None
    host: Annotated[str | None, Field(max_length=255, description="the storage host (default: most free)")] = None
    master: Annotated[bool, Field(description="a gold master farms clone with `from: NAME`")] = False
    source: Annotated[str | None, Field(alias="from", max_length=255,
                                        description="clone VOLUME@SNAPSHOT or a master")] = None


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    snapshot: Annotated[str, Field(min_length=1, max_length=40)]


def tree(m: Manager) -> tuple[vo.Tree, dict[str, dict[str, Any]], set[str]]:
    """The volume objects with the hosts' reports and the farms' volumes (id -> from, size)."""
    reports = m.reports()
    farms = [(f, o.status) for o in m.store.objects("farm") if (f := m.farms.for_hosts(o))]
    plan = VolumeView(farms, reports).plan
    farm = {vid: (v.source, v.size_bytes) for vid, v in plan.volumes.items()}
    where = {name: host for name, (host, _) in held(reports).items()}
    return vo.Tree(vo.records(m.store), where, farm), reports, set(farm) | set(plan.unplaced)


def _admin(who: Principal, what: str) -> None:
    if who.role != "admin":
        raise ApiError(403, f"{who.name} ({who.role}) may not {what}: standalone volumes are an admin's")


def create_volume(m: Manager, who: Principal, req: CreateRequest) -> dict[str, Any]:
    _admin(who, "create volumes")
    t, reports, _ = tree(m)
    spec = vo.create(m.store, t, pool_free(reports), req.name, req.size_bytes, req.host, req.master, req.source)
    m._changes_made([spec["host"]])
    return {"name": req.name, **spec}


def snapshot_volume(m: Manager, who: Principal, name: str, req: SnapshotRequest) -> dict[str, Any]:
    ids = split_volume_id(name)
    if ids is not None and not who.can_write(ids[0]):
        raise ApiError(403, f"{who.name} ({who.role}) may not change farm {ids[0]!r}")
    if ids is None:
        _admin(who, "snapshot standalone volumes")
    t, _, _ = tree(m)
    spec = vo.snapshot(m.store, t, name, req.snapshot)
    m._changes_made([spec["host"]])
    return {"name": backing_name(f"{name}@{req.snapshot}"), **spec}


def delete_object(m: Manager, who: Principal, name: str) -> dict[str, Any]:
    """DELETE /v1/volumes/{name} for what is not a farm's wanted volume (volumes_api hands it here)."""
    _admin(who, "delete standalone or kept volumes")
    vo.prune(m.store, m.store.objects(vo.KIND), tree(m)[0].held)  # dropped ones the hosts deleted already
    t, _, wanted = tree(m)
    gone = vo.delete(m.store, t, name, wanted)
    m._changes_made(sorted({t.host(g) or "" for g in gone} - {""}))
    return {"deleted": gone}


def rows(m: Manager) -> list[dict[str, Any]]:
    t, _, _ = tree(m)
    if any(r.get("drop") and name not in t.held for name, r in t.objs.items()):
        vo.prune(m.store, m.store.objects(vo.KIND), t.held)  # deleted by their hosts: forgotten
        t, _, _ = tree(m)
    return vo.rows(t)


def row(m: Manager, name: str) -> dict[str, Any] | None:
    return next((r for r in rows(m) if r["id"] == name), None)


@router.post("/v1/volumes", summary="A standalone volume or master: empty, or a clone of VOLUME@SNAP or a master",
             responses=errors(400, 401, 403, 404, 409))
def post_volume(m: Mgr, who: Who, req: CreateRequest) -> dict[str, Any]:
    return create_volume(m, who, req)


@router.post("/v1/volumes/{name}/snapshots", summary="Snapshot a volume (consistent: taken by its export's daemon)",
             responses=errors(400, 401, 403, 404, 409))
def post_snapshot(m: Mgr, who: Who, name: str, req: SnapshotRequest) -> dict[str, Any]:
    return snapshot_volume(m, who, name, req)


def listing(m: Manager, who: Principal, farm: str | None) -> list[dict[str, Any]]:
    return volumes_api.volumes(m, who, farm) + (rows(m) if farm is None else [])


def one(m: Manager, who: Principal, name: str) -> dict[str, Any]:
    return row(m, name) or volumes_api.volume(m, who, name)


def delete(m: Manager, who: Principal, name: str) -> dict[str, Any]:
    ids = split_volume_id(name)
    if ids is not None and m.store.get("farm", ids[0]) and any(
            r["id"] == name for r in volumes_api.volumes(m, who, ids[0])):
        return volumes_api.delete_volume(m, who, name)  # a farm's volume: 409 saying what to do
    return delete_object(m, who, name)


@router.get("/v1/volumes", summary="The farms' volumes, standalone volumes, masters and snapshots",
            responses=errors(401, 403))
def get_volumes(m: Mgr, who: Who,
                farm: Annotated[str | None, Query(max_length=255, description="only this farm")] = None) \
        -> list[dict[str, Any]]:
    return listing(m, who, farm)


@router.get("/v1/volumes/{name}", summary="One volume: a farm's, a standalone one or a snapshot",
            responses=errors(401, 403, 404))
def get_volume(m: Mgr, who: Who, name: str) -> dict[str, Any]:
    return one(m, who, name)


@router.delete("/v1/volumes/{name}", summary="Delete a standalone volume, a snapshot or a kept volume no farm "
               "wants (refused while something backs on it, saying what)", responses=errors(401, 403, 404, 409))
def del_volume(m: Mgr, who: Who, name: str) -> dict[str, Any]:
    return delete(m, who, name)
