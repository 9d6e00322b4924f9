"""Volumes as objects: create, snapshot, clone (a branching tree), delete, the depth policy, and
what the storage hosts are told (their desired states' `volumes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from softudc.manager import volume_objects as vo
from softudc.manager.api import make_app
from softudc.manager.auth import Principal, TokenStore
from softudc.manager.desired import DesiredInputs
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.store import Store
from softudc.manager.volume_objects_api import (
    CreateRequest,
    SnapshotRequest,
    create_volume,
    delete_object,
    listing,
    snapshot_volume,
)
from softudc.manager.volume_objects_api import delete as delete_volume
from softudc.manager.volume_objects_api import one as volume
from tests.unit.manager.test_loop import FakeStore

GiB = 1 << 30
ADMIN = Principal("admin", "admin")
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: shop}
spec:
  vnets: [{name: front, subnet: 10.0.0.0/24}]
  vms:
    - name: db
      memory: 256Mi
      image: test-guest
      nics: [{vnet: front}]
      volumes:
        - {name: data, size: 1Gi, class: remote, from: gold@v1}
"""


def report(m: Manager, host: str, held: list[str], free: int = 10 * GiB) -> None:
    m.host_status(host, host, {"vcpus": 8, "memory_mib": 8192, "running": [], "contract": 3,
                               "pool": {"capacity_bytes": 10 * GiB, "free_bytes": free},
                               "volumes": {n: {} for n in held}})


def desired_volumes(m: Manager, store: FakeStore, host: str) -> list[dict[str, Any]]:
    farms = [(f, o.status) for o in store.objects("farm") if (f := m.farms.for_hosts(o))]
    state = DesiredInputs(farms, m.reports(), lambda f, n: {}, objects=vo.records(m.store)).json(host)
    return list(state.get("volumes", []))


def test_create_snapshot_clone_and_a_clone_of_the_clone_reach_the_hosts(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    store.put("host", "h2", {"joined": 1.0, "certificate": "f2"})
    report(m, "h1", [], free=GiB)
    report(m, "h2", [])
    made = create_volume(m, ADMIN, CreateRequest(name="gold", size_bytes=GiB, master=True))
    assert made["host"] == "h2"  # the most room
    assert [(v["name"], v["size_bytes"], v.get("allowed")) for v in desired_volumes(m, store, "h2")] == \
        [("gold", GiB, None)]  # not exported
    with pytest.raises(ApiError, match="no volume nope held"):
        snapshot_volume(m, ADMIN, "nope", SnapshotRequest(snapshot="v1"))
    report(m, "h2", ["gold"])
    snap = snapshot_volume(m, ADMIN, "gold", SnapshotRequest(snapshot="v1"))
    assert snap["name"] == "gold.snap.v1" and snap["depth"] == 1
    want = {v["name"]: v for v in desired_volumes(m, store, "h2")}
    assert want["gold.snap.v1"]["snapshot_of"] == "gold"
    report(m, "h2", ["gold", "gold.snap.v1"])
    clone = create_volume(m, ADMIN, CreateRequest.model_validate({"name": "b1", "from": "gold@v1"}))
    assert (clone["host"], clone["backing"], clone["size_bytes"], clone["depth"]) == ("h2", "gold.snap.v1", GiB, 2)
    report(m, "h2", ["gold", "gold.snap.v1", "b1"])
    snapshot_volume(m, ADMIN, "b1", SnapshotRequest(snapshot="s"))
    report(m, "h2", ["gold", "gold.snap.v1", "b1", "b1.snap.s"])
    cc = create_volume(m, ADMIN, CreateRequest.model_validate({"name": "b2", "from": "b1@s"}))
    assert cc["backing"] == "b1.snap.s" and cc["depth"] == 3
    want = {v["name"]: v for v in desired_volumes(m, store, "h2")}
    assert want["b2"]["backing"] == "b1.snap.s" and want["b1"]["backing"] == "gold.snap.v1"
    rows = {r["id"]: r for r in listing(m, ADMIN, None)}
    assert rows["gold"]["class"] == "master" and rows["gold"]["snapshots"] == ["v1"]
    assert rows["b2"]["from"] == "b1@s" and volume(m, ADMIN, "b1")["depth"] == 3  # b1 over gold.snap.v1 + a snapshot


def test_a_farm_clones_a_snapshot_on_its_host_and_deleting_is_refused_while_it_backs_on_it(
        world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    report(m, "h1", ["gold", "gold.snap.v1"])
    store.put("volume", "gold", {"type": "volume", "size_bytes": GiB, "host": "h1", "depth": 1})
    store.put("volume", "gold.snap.v1", {"type": "snapshot", "of": "gold", "snapshot": "v1", "host": "h1",
                                         "depth": 1, "size_bytes": GiB})
    store.put("farm", "shop", {"descriptor": FARM, "owner": "admin"})
    store.set_status("farm", "shop", {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]})
    want = {v["name"]: v for v in desired_volumes(m, store, "h1")}
    assert want["shop--db-0--data"]["backing"] == "gold.snap.v1"
    with pytest.raises(ApiError, match="shop--db-0--data backs on gold or its snapshots"):
        delete_volume(m, ADMIN, "gold")
    with pytest.raises(ApiError, match="belongs to VM db-0 of farm shop"):
        delete_volume(m, ADMIN, "shop--db-0--data")
    with pytest.raises(ApiError, match="may not"):
        delete_object(m, Principal("op", "operator", ("shop",)), "gold")


def test_delete_drops_a_volume_with_its_snapshots_and_a_kept_orphan(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    report(m, "h1", ["gold", "gold.snap.v1", "old--db-0--data"])
    store.put("volume", "gold", {"type": "volume", "size_bytes": GiB, "host": "h1", "depth": 1})
    store.put("volume", "gold.snap.v1", {"type": "snapshot", "of": "gold", "snapshot": "v1", "host": "h1",
                                         "depth": 1, "size_bytes": GiB})
    assert delete_volume(m, ADMIN, "gold") == {"deleted": ["gold", "gold.snap.v1"]}
    assert delete_volume(m, ADMIN, "old--db-0--data") == {"deleted": ["old--db-0--data"]}  # no farm wants it
    want = {v["name"]: v["drop"] for v in desired_volumes(m, store, "h1")}
    assert want == {"gold": True, "gold.snap.v1": True, "old--db-0--data": True}
    with pytest.raises(ApiError, match="no volume nothing"):
        delete_volume(m, ADMIN, "nothing")
    report(m, "h1", [])
    with pytest.raises(ApiError):
        delete_volume(m, ADMIN, "gold")  # gone from the host: the dropped records are pruned first
    assert store.objects("volume") == []


def test_names_sizes_and_placement_are_checked(world: tuple[Manager, FakeStore]) -> None:
    m, _ = world
    report(m, "h1", ["gold"], free=GiB)
    for req, match in [({"name": "a--b", "size_bytes": GiB}, "single '-'"),
                       ({"name": "gold", "size_bytes": GiB}, "exists already"),
                       ({"name": "new"}, "needs its size"),
                       ({"name": "big", "size_bytes": 2 * GiB}, "no host's pool has"),
                       ({"name": "big", "size_bytes": GiB, "host": "h9"}, "reports no storage pool"),
                       ({"name": "c", "from": "gold@nope"}, "no snapshot nope of gold"),
                       ({"name": "c", "from": "shop--db-0--data"}, "no volume")]:
        with pytest.raises(ApiError, match=match):
            create_volume(m, ADMIN, CreateRequest.model_validate(req))
    with pytest.raises(ApiError, match="may not create"):
        create_volume(m, Principal("op", "operator", ("shop",)), CreateRequest(name="x", size_bytes=GiB))


def test_the_depth_policy_flattens_at_the_soft_limit_and_refuses_at_the_hard_one() -> None:
    store = cast(Store, FakeStore())
    objs: dict[str, dict[str, Any]] = {"v": {"type": "volume", "size_bytes": GiB, "host": "h1", "depth": 1}}
    limits = vo.Depth(soft=3, hard=4)
    for i in range(3):
        t = vo.Tree(objs, {n: "h1" for n in objs})
        vo.snapshot(store, t, "v", f"s{i}", limits)
        objs = vo.records(store) | ({"v": objs["v"]} if "v" not in vo.records(store) else {})
    assert vo.records(store)["v"]["flatten"] is True  # a chain of 3 reached the soft limit
    t = vo.Tree(vo.records(store), {n: "h1" for n in vo.records(store)})
    assert t.depth("v") == 4
    with pytest.raises(ApiError, match="over the hard limit 4"):
        vo.snapshot(store, t, "v", "s9", limits)
    assert vo.create(store, t, {}, "c", None, source="v@s0", limits=limits)["depth"] == 2
    deep = vo.create(store, t, {}, "d", None, source="v@s2", limits=limits)  # s2 froze a chain of 3
    assert deep["depth"] == 4 and deep["flatten"] is True
    t = vo.Tree(vo.records(store), {n: "h1" for n in vo.records(store)})
    with pytest.raises(ApiError, match="over the hard limit 4"):
        vo.snapshot(store, t, "d", "x", limits)


@given(st.lists(st.sampled_from(["snap", "clone"]), max_size=8))
def test_depth_is_one_more_per_snapshot_and_per_clone_layer(steps: list[str]) -> None:
    store = cast(Store, FakeStore())
    store.put("volume", "v0", {"type": "volume", "size_bytes": GiB, "host": "h1", "depth": 1})
    current, expect = "v0", 1
    limits = vo.Depth(soft=100, hard=100)
    for n, step in enumerate(steps, 1):
        t = vo.Tree(vo.records(store), {k: "h1" for k in vo.records(store)})
        vo.snapshot(store, t, current, f"s{n}", limits)
        expect += 1  # the volume goes on in an overlay over its snapshot
        if step == "clone":
            t = vo.Tree(vo.records(store), {k: "h1" for k in vo.records(store)})
            vo.create(store, t, {}, f"v{n}", None, source=f"{current}@s{n}", limits=limits)
            current = f"v{n}"  # over the snapshot (expect - 1 layers): as deep as the volume it forks
    t = vo.Tree(vo.records(store), {k: "h1" for k in vo.records(store)})
    assert t.depth(current) == expect


def test_the_routes_answer_for_objects_and_hand_farm_volumes_on(world: tuple[Manager, FakeStore],
                                                                   tmp_path: Path) -> None:
    m, store = world
    report(m, "h1", ["gold"])
    store.put("volume", "gold", {"type": "volume", "size_bytes": GiB, "host": "h1", "depth": 1, "master": True})
    store.put("farm", "shop", {"descriptor": FARM.replace("gold@v1", "gold"), "owner": "admin"})
    store.set_status("farm", "shop", {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]})
    tokens = TokenStore(tmp_path / "tokens.json")
    admin, viewer = tokens.create("admin2", "admin"), tokens.create("v", "viewer", ["shop"])
    with TestClient(make_app(m), base_url="https://testserver") as client:

        def call(method: str, path: str, token: str = admin, **kw: Any) -> tuple[int, Any]:
            r = client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
            return r.status_code, r.json()

        status, rows = call("GET", "/v1/volumes")
        assert status == 200 and [r["id"] for r in rows] == ["shop--db-0--data", "gold"], rows
        assert [r["id"] for r in call("GET", "/v1/volumes?farm=shop")[1]] == ["shop--db-0--data"]
        assert call("GET", "/v1/volumes/gold")[1]["class"] == "master"
        assert call("GET", "/v1/volumes/shop--db-0--data")[1]["farm"] == "shop"
        status, body = call("DELETE", "/v1/volumes/shop--db-0--data")
        assert status == 409 and "belongs to VM db-0" in str(body), body
        status, body = call("DELETE", "/v1/volumes/gold")
        assert status == 409 and "shop--db-0--data backs on gold" in str(body), body
        assert call("POST", "/v1/volumes", viewer, json={"name": "x", "size_bytes": GiB})[0] == 403
        assert call("POST", "/v1/volumes", json={"name": "x", "size_bytes": 1})[0] in (400, 422)
        assert call("POST", "/v1/volumes/shop--db-0--data/snapshots", json={"snapshot": "s1"})[0] == 404  # not held
        report(m, "h1", ["gold", "shop--db-0--data"])
        status, body = call("POST", "/v1/volumes/shop--db-0--data/snapshots", json={"snapshot": "s1"})
        assert status == 200 and body["name"] == "shop--db-0--data.snap.s1" and body["depth"] == 2, body
        status, body = call("POST", "/v1/volumes", json={"name": "fork", "from": "shop--db-0--data@s1"})
        assert status == 200 and (body["host"], body["depth"]) == ("h1", 3), body


def test_a_snapshot_lives_while_its_volume_is_held_or_something_backs_on_it() -> None:
    objs = {"f--a-0--d.snap.s": {"type": "snapshot", "of": "f--a-0--d", "snapshot": "s", "host": "h1", "depth": 1,
                                 "size_bytes": GiB}}
    kept = vo.Tree(objs, {"f--a-0--d": "h1", "f--a-0--d.snap.s": "h1"})  # its farm gone, the volume kept
    assert [v["name"] for v in vo.desired(kept, "h1", set())] == ["f--a-0--d.snap.s"]
    gone = vo.Tree(objs, {"f--a-0--d.snap.s": "h1"})
    assert vo.desired(gone, "h1", set()) == []  # its host deletes it after the grace period
    used = vo.Tree({**objs, "c": {"type": "volume", "size_bytes": GiB, "host": "h1", "backing": "f--a-0--d.snap.s"}},
                   {"f--a-0--d.snap.s": "h1"})
    assert [v["name"] for v in vo.desired(used, "h1", set())] == ["c", "f--a-0--d.snap.s"]
