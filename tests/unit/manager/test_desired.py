"""What each host should run, as the contract's DesiredState: complete (keys, members), valid by
construction, and served in the contract version the host's report claims."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from softudc.manager import desired
from softudc.manager.controller import inventory, reconcile_farm
from softudc.manager.desired import desired_json, desired_json_many, desired_state, host_desired, served_version
from softudc.model.farm import Farm, validate
from softudc.model.hoststate import CONTRACT_VERSION, DesiredState, parse, vm_name

DEMO = (Path(__file__).parents[3] / "configs" / "farms" / "demo.yaml").read_text()
UNDERLAY = {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"}
REPORTS = {h: {"vcpus": 8, "memory_mib": 8192, "state": "ready", "running": [], "underlay": a, "contract": 2}
           for h, a in UNDERLAY.items()}


def keys(farm: str, vnet: str) -> dict[str, Any]:
    return {"send_epoch": 1, "secrets": {"1": (farm + vnet).encode().hex()[:64].ljust(64, "0")}}


def planned() -> list[tuple[Farm, dict[str, Any]]]:
    farm = validate(DEMO, "demo.yaml")
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    return [(farm, status)]


def test_a_hosts_desired_state_is_complete_and_follows_the_contract() -> None:
    farms = planned()
    for host in UNDERLAY:
        state = desired_state(host, farms, REPORTS, keys)
        assert state.contract == CONTRACT_VERSION
        assert {n.vnet for vm in state.vms for n in vm.nics} == {v.id for v in state.vnets}
        for v in state.vnets:
            assert v.keys is not None and v.keys.as_json() == keys("demo", v.name or "")
            assert v.members and set(v.members) <= set(UNDERLAY.values())
            assert UNDERLAY[host] in v.members  # a host with an instance on it is a member
        assert parse(DesiredState, state.as_json()) == state  # what goes on the wire reads back the same


def test_members_wait_until_every_hosts_underlay_is_known() -> None:
    farms = planned()
    silent = {h: {k: v for k, v in r.items() if k != "underlay"} for h, r in REPORTS.items()}
    for host in UNDERLAY:  # no addresses known: the gatekeepers' configured members apply
        assert all(v.members is None for v in desired_state(host, farms, silent, keys).vnets)


def test_the_draft_is_a_contract_document_without_keys_or_members() -> None:
    farms = planned()
    for host in UNDERLAY:
        draft = parse(DesiredState, host_desired(host, farms))
        assert all(v.keys is None and v.members is None for v in draft.vnets)


def test_a_contract_1_gatekeeper_gets_its_document_and_a_contract_2_one_says_so() -> None:
    farms = planned()
    v1 = {**REPORTS, "h1": {k: v for k, v in REPORTS["h1"].items() if k != "contract"}}
    assert "contract" not in desired_json("h1", farms, v1, keys)  # exactly what today's gatekeepers read
    assert desired_json("h1", farms, REPORTS, keys)["contract"] == 2
    assert {k: v for k, v in desired_json("h1", farms, REPORTS, keys).items() if k != "contract"} == \
        desired_json("h1", farms, v1, keys)


def test_the_version_served_is_the_reports_or_the_newest() -> None:
    assert served_version(None) == CONTRACT_VERSION  # not reported yet
    assert served_version({"vcpus": 1}) == 1
    assert served_version({"contract": 2}) == 2
    assert served_version({"contract": True}) == CONTRACT_VERSION  # not a version at all


def test_many_hosts_at_once_get_what_each_would_alone_and_members_are_worked_out_once_per_vnet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    farms = planned()
    alone = {h: desired_json(h, farms, REPORTS, keys) for h in UNDERLAY}
    calls: list[str] = []
    real = desired.vnet_hosts

    def counted(farm: Farm, status: dict[str, Any], vnet: str) -> list[str]:
        calls.append(vnet)
        return real(farm, status, vnet)

    monkeypatch.setattr(desired, "vnet_hosts", counted)
    hosts = [f"h{i}" for i in range(1, 4)] + [f"idle{i}" for i in range(50)]  # most run nothing
    together = desired_json_many(hosts, farms, REPORTS, keys)
    assert {h: together[h] for h in UNDERLAY} == alone
    assert all(together[h]["vms"] == [] for h in hosts if h.startswith("idle"))
    vnets = {v["id"] for d in alone.values() for v in d["vnets"]}
    assert len(calls) == len(vnets)  # once per VNET, not once per host and VNET


def test_each_nics_peers_are_the_other_instances_addresses_on_its_vnet_in_address_order() -> None:
    """The farm's index (made once for many hosts) gives what walking every instance gave."""
    farms = planned()
    farm, status = farms[0]
    instances, seen = status["instances"], 0
    for host in UNDERLAY:
        for vm in host_desired(host, farms)["vms"]:
            inst = next(i for i in instances if vm_name(farm.name, i["name"]) == vm["name"])
            for nic in vm["nics"]:
                vnet = next(n for n, v in status["vnet_ids"].items() if v == nic["vnet"])
                expect = sorted({o["addresses"][vnet] for o in instances
                                 if o["name"] != inst["name"] and vnet in o.get("addresses", {})},
                                key=ipaddress.IPv4Address)
                assert nic["peers"] == expect
                seen += len(expect)
    assert seen  # some NIC has peers
