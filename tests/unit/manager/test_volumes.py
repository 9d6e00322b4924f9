"""Volume placement: local on the VM's host, remote by free pool capacity and kept where it is,
allow lists that follow the farm's VMs, keep on farm deletion, masters' readers."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from softudc.manager.desired import desired_json
from softudc.manager.volumes import VolumeView, farm_deleted, farm_hosts, master_readers, plan_volumes, pool_free
from softudc.model.farm import Farm, VmDef
from softudc.model.volume import VolumeDef

GiB = 1 << 30


def farm(*volumes: VolumeDef, replicas: int = 2) -> Farm:
    return Farm("shop", (), (VmDef("db", replicas, 1, 256, "img", (), volumes=volumes),))


def status(*hosts: str, moving: dict[str, str] | None = None) -> dict[str, Any]:
    insts: list[dict[str, Any]] = [{"name": f"db-{i}", "vm": "db", "host": h} for i, h in enumerate(hosts)]
    for inst in insts:
        if moving and inst["name"] in moving:
            inst["migrating"] = {"to": moving[inst["name"]]}
    return {"instances": insts}


def test_local_volumes_go_to_the_vm_host_and_are_not_exported() -> None:
    plan = plan_volumes([(farm(VolumeDef("data", GiB)), status("h1", "h2"))], {"h1": 4 * GiB, "h2": 4 * GiB}, {})
    assert {v.id: v.host for v in plan.volumes.values()} == {"shop--db-0--data": "h1", "shop--db-1--data": "h2"}
    assert all(v.allowed == () for v in plan.volumes.values()) and plan.unplaced == {}


def test_remote_volumes_go_where_most_room_is_and_follow_the_vms() -> None:
    vol = VolumeDef("data", 3 * GiB, "remote")
    free = {"h1": 4 * GiB, "h2": 5 * GiB, "h3": 1 * GiB}
    plan = plan_volumes([(farm(vol), status("h1", "h1"))], free, {})
    assert plan.volumes["shop--db-0--data"].host == "h2"  # 5 GiB free
    assert plan.volumes["shop--db-1--data"].host == "h1"  # h2 has 2 left, h1 4
    assert plan.volumes["shop--db-0--data"].allowed == ("h1",)
    moved = plan_volumes([(farm(vol), status("h1", "h1", moving={"db-0": "h3"}))], free,
                         {v.id: v.host for v in plan.volumes.values()})
    assert {v.id: v.host for v in moved.volumes.values()} == {v.id: v.host for v in plan.volumes.values()}  # kept
    assert moved.volumes["shop--db-0--data"].allowed == ("h1", "h3")  # the destination may open it


def test_a_volume_without_room_is_named_and_the_others_are_planned() -> None:
    plan = plan_volumes([(farm(VolumeDef("big", 8 * GiB, "remote"), VolumeDef("small", GiB)), status("h1"))],
                        {"h1": 2 * GiB}, {})
    assert "shop--db-0--small" in plan.volumes
    assert "no host's pool has 8589934592 bytes free (the most: 2147483648)" in plan.unplaced["shop--db-0--big"]
    nohost = plan_volumes([(farm(VolumeDef("a", GiB)), status("h9"))], {"h1": 2 * GiB}, {})
    assert "h9 runs no storage service" in nohost.unplaced["shop--db-0--a"]


def test_a_placement_on_a_host_gone_is_made_again() -> None:
    plan = plan_volumes([(farm(VolumeDef("d", GiB, "remote"), replicas=1), status("h1"))], {"h1": 2 * GiB},
                        {"shop--db-0--d": "gone"})
    assert plan.volumes["shop--db-0--d"].host == "h1"


def test_deleting_the_farm_keeps_only_keep_volumes() -> None:
    plan = plan_volumes([(farm(VolumeDef("a", GiB), VolumeDef("b", GiB, keep=True)), status("h1"))],
                        {"h1": 4 * GiB}, {})
    assert farm_deleted("shop", plan.volumes.values()) == (["shop--db-0--a"], ["shop--db-0--b"])
    assert farm_deleted("other", plan.volumes.values()) == ([], [])


def test_a_clone_lives_on_its_master_host_and_a_local_one_needs_the_vm_there() -> None:
    free = {"h1": 4 * GiB, "h2": 4 * GiB}
    remote = plan_volumes([(farm(VolumeDef("c", GiB, "remote", source="gold")), status("h1", "h3"))], free, {},
                          {"gold": "h2"})
    assert {v.host for v in remote.volumes.values()} == {"h2"} and remote.unplaced == {}
    assert master_readers(remote, {"gold": "h2"}) == {}  # every clone beside its master
    local = plan_volumes([(farm(VolumeDef("c", GiB, source="gold")), status("h1", "h2"))], free, {}, {"gold": "h2"})
    assert local.volumes["shop--db-1--c"].host == "h2"
    assert "must be on h2, the master's host" in local.unplaced["shop--db-0--c"]
    none = plan_volumes([(farm(VolumeDef("c", GiB, "remote", source="gold")), status("h1"))], free, {})
    assert "no host holds the master volume gold" in none.unplaced["shop--db-0--c"]
    f = farm(VolumeDef("c", GiB, "remote", source="gold"), replicas=1)  # the master not reported yet
    assert VolumeView([(f, status("h1"))], {"h1": {"pool": {"free_bytes": GiB}}}).disks("shop", "db-0", f.vms[0]) \
        == [{"volume": "shop--db-0--c", "target": "vdb"}]  # the VM waits for it, it does not start without it
    full = plan_volumes([(farm(VolumeDef("c", 8 * GiB, "remote", source="gold")), status("h1"))], free, {},
                        {"gold": "h2"})
    assert "h2 (the master's host) has" in full.unplaced["shop--db-0--c"]


def test_the_view_tells_the_storage_host_what_to_hold_and_the_vm_host_where_to_connect() -> None:
    f = farm(VolumeDef("data", GiB, "remote", source="gold", keep=True), VolumeDef("scratch", GiB), replicas=1)
    reports: dict[str, dict[str, Any]] = {
        "h1": {"pool": {"free_bytes": 4 * GiB}, "volumes": {}},
        "h2": {"pool": {"free_bytes": 4 * GiB}, "volumes": {"gold": {}}}}
    view = VolumeView([(f, status("h1"))], reports)
    assert view.for_host("h2") == [{"name": "shop--db-0--data", "size_bytes": GiB, "backing": "gold",
                                    "allowed": ["h1"], "keep": True}]
    assert view.for_host("h1") == [{"name": "shop--db-0--scratch", "size_bytes": GiB, "allowed": [], "keep": False}]
    vm = f.vms[0]
    assert view.disks("shop", "db-0", vm) == [  # not exported yet: no address, the VM waits
        {"volume": "shop--db-0--data", "target": "vdb", "host": "h2"},
        {"volume": "shop--db-0--scratch", "target": "vdc", "host": "h1", "local": True}]
    reports["h2"]["volumes"]["shop--db-0--data"] = {"address": "10.0.0.2", "port": 10809, "allowed": ["h1"]}
    view = VolumeView([(f, status("h1", moving={"db-0": "h3"}))], reports)
    assert view.disks("shop", "db-0", vm)[0] == {"volume": "shop--db-0--data", "target": "vdb", "host": "h2",
                                                 "address": "10.0.0.2", "port": 10809}
    assert view.for_host("h2")[0]["allowed"] == ["h1", "h3"]  # the destination is let in ...
    assert view.admit("shop", "db-0", vm, "h1") and not view.admit("shop", "db-0", vm, "h3")  # ... once h2 says so
    reports["h2"]["volumes"]["shop--db-0--data"]["allowed"] = ["h1", "h3"]
    assert VolumeView([(f, status("h1"))], reports).admit("shop", "db-0", vm, "h3")


def test_a_volume_from_the_image_carries_the_vm_image_to_its_storage_host() -> None:
    f = farm(VolumeDef("root", GiB, "remote", source="image"), VolumeDef("data", GiB), replicas=1)
    reports: dict[str, dict[str, Any]] = {"h2": {"pool": {"free_bytes": 4 * GiB}, "volumes": {}},
                                          "h1": {"pool": {"free_bytes": GiB}, "volumes": {}}}
    view = VolumeView([(f, status("h1"))], reports)
    assert view.for_host("h2") == [{"name": "shop--db-0--root", "size_bytes": GiB, "allowed": ["h1"],
                                    "keep": False, "image": "img"}]
    assert view.for_host("h1") == [{"name": "shop--db-0--data", "size_bytes": GiB, "allowed": [], "keep": False}]
    state = desired_json("h2", [(f, status("h1"))], {**reports, "h2": {**reports["h2"], "contract": 3}},
                         lambda farm, vnet: {})
    assert state["volumes"][0]["image"] == "img"  # the contract's DesiredVolume carries it


def test_a_volume_a_host_reports_stays_there() -> None:
    f = farm(VolumeDef("d", GiB, "remote"), replicas=1)
    reports: dict[str, dict[str, Any]] = {"h1": {"pool": {"free_bytes": GiB}, "volumes": {"shop--db-0--d": {}}},
                                          "h2": {"pool": {"free_bytes": 9 * GiB}}}
    assert VolumeView([(f, status("h1"))], reports).plan.volumes["shop--db-0--d"].host == "h1"
    assert pool_free(reports) == {"h1": GiB, "h2": 9 * GiB}
    del reports["h1"]["pool"]  # its pool unreadable for a round: the volume stays
    assert VolumeView([(f, status("h1"))], reports).plan.volumes["shop--db-0--d"].host == "h1"


@given(st.lists(st.tuples(st.sampled_from(["local", "remote"]), st.integers(1, 6)), min_size=1, max_size=6),
       st.lists(st.sampled_from(["h1", "h2", "h3"]), min_size=1, max_size=5),
       st.dictionaries(st.sampled_from(["h1", "h2", "h3"]), st.integers(0, 12), min_size=1))
def test_placement_never_overfills_a_pool_and_places_or_names_each(
        vols: list[tuple[str, int]], hosts: list[str], free_gib: dict[str, int]) -> None:
    f = farm(*(VolumeDef(f"v{i}", n * GiB, cls) for i, (cls, n) in enumerate(vols)), replicas=len(hosts))
    free = {h: g * GiB for h, g in free_gib.items()}
    plan = plan_volumes([(f, status(*hosts))], free, {})
    assert len(plan.volumes) + len(plan.unplaced) == len(vols) * len(hosts)
    for h in free:
        assert sum(v.size_bytes for v in plan.on_host(h)) <= free[h]
    for v in plan.volumes.values():
        assert v.cls == "remote" or v.host == v.vm_host
        assert v.allowed == (farm_hosts(status(*hosts)) if v.cls == "remote" else ())


def test_desired_states_carry_volumes_and_disks_in_contract_3_only() -> None:
    f = farm(VolumeDef("data", GiB, "remote"), replicas=1)
    reports: dict[str, dict[str, Any]] = {
        "h1": {"contract": 3, "pool": {"free_bytes": GiB}},
        "h2": {"contract": 3, "pool": {"free_bytes": 4 * GiB},
               "volumes": {"shop--db-0--data": {"address": "10.0.0.2", "port": 10810, "allowed": ["h1"]}}}}
    farms = [(f, status("h1"))]
    h2 = desired_json("h2", farms, reports, lambda _f, _v: {})
    assert h2["volumes"] == [{"name": "shop--db-0--data", "size_bytes": GiB, "allowed": ["h1"], "keep": False}]
    h1 = desired_json("h1", farms, reports, lambda _f, _v: {})
    assert "volumes" not in h1 and h1["vms"][0]["disks"] == [
        {"volume": "shop--db-0--data", "target": "vdb", "host": "h2", "address": "10.0.0.2", "port": 10810}]
    old = {h: {**r, "contract": 2} for h, r in reports.items()}
    assert "volumes" not in desired_json("h2", farms, old, lambda _f, _v: {})
    assert "disks" not in desired_json("h1", farms, old, lambda _f, _v: {})["vms"][0]
