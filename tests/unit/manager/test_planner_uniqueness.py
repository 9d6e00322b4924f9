"""What the planner hands out is unique and complete (audit R6, R9, R10, R26): VNET ids across
farms, addresses and MACs per VNET, for new instances and for kept ones that gained a NIC; pools
are walked lazily."""

from __future__ import annotations

import ipaddress
import time

import pytest

import softudc.manager.planner as planner
from softudc.manager.controller import inventory, reconcile_farm
from softudc.manager.desired import host_desired
from softudc.manager.planner import Instance, PlanError, _pool, allocate_vnet_ids, plan_farm
from softudc.model.farm import validate
from softudc.placement import Host

REPORTS = {f"h{i}": {"vcpus": 64, "memory_mib": 65536, "running": []} for i in (1, 2)}


def _farm(name: str, vnets: str = "{name: v, subnet: 10.0.0.0/24}", nics: str = "[{vnet: v}]",
          replicas: int = 2) -> str:
    return (f"apiVersion: softudc.io/v1alpha1\nkind: Farm\nmetadata: {{name: {name}}}\n"
            f"spec:\n  vnets: [{vnets}]\n"
            f"  vms: [{{name: a, replicas: {replicas}, memory: 64Mi, image: g, nics: {nics}}}]\n")


def test_r6_a_vnet_id_another_farm_holds_is_not_kept() -> None:
    x = validate(_farm("x"), "x")
    # x's status still says v=2 (a revived tombstone, or data from before ids were checked); y has 2.
    ids = allocate_vnet_ids(x, {("x", "v"): 2, ("y", "w"): 2})
    assert ids["v"] != 2
    assert allocate_vnet_ids(x, {("x", "v"): 2, ("y", "w"): 3}) == {"v": 2}  # free again: kept


def test_r6_r10_vnet_id_exhaustion_is_a_plan_error_that_names_the_vnet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "MAX_VNET_ID", 4)
    x = validate(_farm("x"), "x")
    with pytest.raises(PlanError, match="VNET v gets none; delete a farm"):
        allocate_vnet_ids(x, {("y", "a"): 2, ("y", "b"): 3, ("z", "c"): 4})


def test_r9_the_pool_of_a_slash_16_is_walked_lazily() -> None:
    pool = _pool(ipaddress.IPv4Network("10.0.0.0/16"), {ipaddress.IPv4Address("10.0.0.2")})
    assert not isinstance(pool, list)
    assert [str(next(pool)) for _ in range(2)] == ["10.0.0.3", "10.0.0.4"]  # .1: the gateway; .2: taken
    small = list(_pool(ipaddress.IPv4Network("10.0.0.0/30"), set()))
    assert small == [ipaddress.IPv4Address("10.0.0.2")]  # as before: hosts() less the gateway


def test_r9_planning_a_slash_16_farm_is_cheap() -> None:
    farm = validate(_farm("x", "{name: v, subnet: 10.0.0.0/16}", replicas=500), "x")
    start = time.monotonic()
    plan = plan_farm(farm, [Host("h1", 1000, 1 << 20)], [])
    assert len(plan.create) == 500 and time.monotonic() - start < 2.0  # the /8 took 17 s on f836a52


def test_r10_a_nic_added_to_a_vm_gets_addresses_on_its_kept_instances() -> None:
    one = validate(_farm("x"), "x")
    status, _, _ = reconcile_farm(one, {}, inventory(REPORTS), {}, REPORTS)
    two = validate(_farm("x", "{name: v, subnet: 10.0.0.0/24}, {name: w, subnet: 10.1.0.0/24}",
                         "[{vnet: v}, {vnet: w}]"), "x")
    after, summary, _ = reconcile_farm(two, status, inventory(REPORTS), {}, REPORTS)
    assert summary == "+0 -0 =2"
    for before, now in zip(status["instances"], after["instances"], strict=True):
        assert now["addresses"]["v"] == before["addresses"]["v"] and now["macs"]["v"] == before["macs"]["v"]
        assert ipaddress.IPv4Address(now["addresses"]["w"]) in ipaddress.IPv4Network("10.1.0.0/24")
    assert len({i["addresses"]["w"] for i in after["instances"]}) == 2
    for h in REPORTS:  # KeyError 'w' on f836a52: every host's desired state failed
        for vm in host_desired(h, [(two, after)])["vms"]:
            assert {n["ip"].split("/")[0] for n in vm["nics"]} >= {i["addresses"]["w"] for i in after["instances"]
                                                                    if f"x--{i['name']}" == vm["name"]}


def test_r10_desired_state_survives_a_status_that_lacks_an_address_or_a_vnet_id() -> None:
    two = validate(_farm("x", "{name: v, subnet: 10.0.0.0/24}, {name: w, subnet: 10.1.0.0/24}",
                         "[{vnet: v}, {vnet: w}]", replicas=1), "x")
    old = {"vnet_ids": {"v": 2}, "instances": [{"name": "a-0", "vm": "a", "host": "h1",
                                                "addresses": {"v": "10.0.0.2"}}]}
    desired = host_desired("h1", [(two, old)])  # e.g. the farm's new plan failed: its status is the old one
    assert [n["vnet"] for n in desired["vms"][0]["nics"]] == [2]


def test_r26_macs_are_stored_unique_per_vnet_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    real = planner.derive_mac
    monkeypatch.setattr(planner, "derive_mac", lambda f, i, v, attempt=0: real("same", "same", v, attempt))
    farm = validate(_farm("x", replicas=5), "x")
    plan = plan_farm(farm, [Host("h1", 64, 65536)], [])
    macs = [i.macs["v"] for i in plan.create]
    assert len(set(macs)) == 5  # the 24-bit hash collided on purpose: each got another one
    # Stored MACs are kept as they are, even when derivation would now give another.
    kept = [Instance(i.name, i.vm, i.host, i.addresses, None, {"v": f"52:54:00:00:00:0{n}"})
            for n, i in enumerate(plan.create)]
    again = plan_farm(farm, [Host("h1", 64, 65536)], kept)
    assert [i.macs["v"] for i in again.keep] == [f"52:54:00:00:00:0{n}" for n in range(5)]


def test_r26_an_instance_from_before_stored_macs_keeps_the_mac_it_had() -> None:
    farm = validate(_farm("x", replicas=1), "x")
    from softudc.model.hoststate import nic_mac

    plan = plan_farm(farm, [Host("h1", 64, 65536)], [Instance("a-0", "a", "h1", {"v": "10.0.0.2"})])
    assert plan.keep[0].macs == {"v": nic_mac("x", "a-0", "v")}


def test_r25_a_vnet_error_a_host_reports_shows_in_the_farms_status() -> None:
    farm = validate(_farm("x", replicas=1), "x")
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    host, vid = status["instances"][0]["host"], status["vnet_ids"]["v"]
    reports = {**REPORTS, host: {**REPORTS[host], "errors": [f"vnet.create {vid}: MTU 1452 does not fit (at most "
                                                             "1400)", f"vnet.create {vid + 1}: someone else's"]}}
    after, _, _ = reconcile_farm(farm, status, inventory(reports), {}, reports)
    assert after["vnet_errors"] == [f"{host}: VNET v: MTU 1452 does not fit (at most 1400)"]
    assert after["instances"][0]["error"] == "VNET v: MTU 1452 does not fit (at most 1400)"
    assert after["conditions"]["Degraded"] is True
