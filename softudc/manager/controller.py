"""From stored farms and host reports to what each host should run, and each farm's status.
Pure: the API calls it after every change; gatekeepers fetch their part and converge.

    farm status = {instances: [{name, vm, host, addresses}], vnet_ids: {vnet: id},
                   conditions: {Placed, Ready, Degraded}, unplaced: {instance: [why]}}
    host desired = {vnets: [{id, security}], vms: [{name, vcpus, memory_mib,
                    nics: [{vnet, mac, ip}]}]}

VM names on hosts are `<farm>--<instance>`, so a host can tell the VMs it manages for farms from
anything else it runs. MACs derive from that name: stable across migrations and re-applies.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import asdict
from typing import Any

from softudc.manager.planner import Instance, plan_farm
from softudc.model.farm import Farm
from softudc.placement import Host

SEPARATOR = "--"


def vm_name(farm: str, instance: str) -> str:
    return f"{farm}{SEPARATOR}{instance}"


def nic_mac(farm: str, instance: str, vnet: str) -> str:
    digest = hashlib.sha256(f"{farm}/{instance}/{vnet}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def inventory(host_reports: dict[str, dict[str, Any]]) -> list[Host]:
    """Hosts that reported capacity; only `ready` ones take new VMs (placement skips the rest)."""
    return [Host(name, int(r["vcpus"]), int(r["memory_mib"]), str(r.get("state", "ready")))
            for name, r in sorted(host_reports.items()) if "vcpus" in r and "memory_mib" in r]


def reconcile_farm(farm: Farm, status: dict[str, Any], hosts: list[Host],
                   taken_vnet_ids: dict[tuple[str, str], int], host_reports: dict[str, dict[str, Any]]
                   ) -> tuple[dict[str, Any], str]:
    """The farm's new status (instances placed, kept or gone) and a one-line summary for events.
    `hosts` carry the usage of every other farm already."""
    current = [Instance(i["name"], i["vm"], i["host"], dict(i.get("addresses", {})))
               for i in status.get("instances", [])]
    known = {**taken_vnet_ids, **{(farm.name, k): v for k, v in status.get("vnet_ids", {}).items()}}
    plan = plan_farm(farm, hosts, current, known)
    instances = sorted(plan.keep + plan.create, key=lambda i: i.name)
    running = {vm for r in host_reports.values() for vm in r.get("running", [])}
    ready = all(vm_name(farm.name, i.name) in running for i in instances)
    new_status = {
        "instances": [asdict(i) for i in instances],
        "vnet_ids": plan.vnet_ids,
        "unplaced": plan.unplaced,
        "conditions": {"Placed": not plan.unplaced, "Ready": ready and not plan.unplaced,
                       "Degraded": bool(plan.unplaced) or (bool(instances) and not ready)},
    }
    summary = f"+{len(plan.create)} -{len(plan.delete)} ={len(plan.keep)}"
    if plan.unplaced:
        summary += f", {len(plan.unplaced)} cannot be placed"
    return new_status, summary


def host_desired(host: str, farms: list[tuple[Farm, dict[str, Any]]]) -> dict[str, Any]:
    """What `host` should run for all farms: the VNETs its VMs need, and the VMs."""
    vnets: dict[int, dict[str, Any]] = {}
    vms = []
    for farm, status in farms:
        ids = status.get("vnet_ids", {})
        vm_defs = {v.name: v for v in farm.vms}
        vnet_defs = {v.name: v for v in farm.vnets}
        for inst in status.get("instances", []):
            if inst["host"] != host:
                continue
            vm = vm_defs.get(inst["vm"])
            if vm is None:
                continue
            nics = []
            for nic in vm.nics:
                vid = ids[nic.vnet]
                vnets[vid] = {"id": vid, "farm": farm.name, "name": nic.vnet,
                              "security": vnet_defs[nic.vnet].security}
                subnet = vnet_defs[nic.vnet].subnet
                ip = f"{inst['addresses'][nic.vnet]}/{subnet.prefixlen}" \
                    if ipaddress.IPv4Address(inst["addresses"][nic.vnet]) in subnet else None
                nics.append({"vnet": vid, "mac": nic_mac(farm.name, inst["name"], nic.vnet), "ip": ip})
            vms.append({"name": vm_name(farm.name, inst["name"]), "vcpus": vm.vcpus, "memory_mib": vm.memory_mib,
                        "nics": nics})
    return {"vnets": sorted(vnets.values(), key=lambda v: v["id"]), "vms": sorted(vms, key=lambda v: v["name"])}
