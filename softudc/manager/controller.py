"""From stored farms and host reports to what each host should run, and each farm's status.
Pure: the API calls it after every change; gatekeepers fetch their part and converge.

    farm status = {instances: [{name, vm, host, addresses}], vnet_ids: {vnet: id},
                   conditions: {Placed, Ready, Degraded}, unplaced: {instance: [why]}}
    host desired = {vnets: [{id, security}], vms: [{name, vcpus, memory_mib,
                    nics: [{vnet, mac, ip, peers}]}]}   (peers: the other instances on that VNET)

VM names on hosts are `<farm>--<instance>`, so a host can tell the VMs it manages for farms from
anything else it runs. MACs derive from that name: stable across migrations and re-applies.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict
from typing import Any

from softudc.manager.planner import Instance, derive_mac, plan_farm
from softudc.model.farm import Farm
from softudc.placement import Host
from softudc.placement.model import fmt_mib

SEPARATOR = "--"


def vm_name(farm: str, instance: str) -> str:
    return f"{farm}{SEPARATOR}{instance}"


def nic_mac(farm: str, instance: str, vnet: str) -> str:
    """The MAC an instance had before MACs were stored in its status (the planner now allocates
    them, unique per VNET, starting from this one)."""
    return derive_mac(farm, instance, vnet)


def split_vm_name(name: str) -> tuple[str, str] | None:
    """(farm, instance) of a VM name made by `vm_name`, None for anything else. Exact, since
    neither part may contain the separator (audit R24)."""
    parts = name.split(SEPARATOR)
    return (parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


def inventory(host_reports: dict[str, dict[str, Any]]) -> list[Host]:
    """Hosts that reported capacity; only `ready` ones take new VMs (placement skips the rest)."""
    return [Host(name, int(r["vcpus"]), int(r["memory_mib"]), str(r.get("state", "ready")))
            for name, r in sorted(host_reports.items()) if "vcpus" in r and "memory_mib" in r]


MIGRATION_STALL_S = 600.0  # a requested migration the source never started is given up after this


def observe(farm: str, instances: list[dict[str, Any]], reports: dict[str, dict[str, Any]],
            now: float) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Instances as the hosts' reports show them: migrations that finished, failed or progressed,
    and VMs found running on another host than planned (moved outside the manager).
    Returns the instances and (type, message) events."""
    running_on: dict[str, list[str]] = {}
    for host, r in sorted(reports.items()):
        for vm in r.get("running", []):
            running_on.setdefault(vm, []).append(host)
    out, events = [], []
    for inst in instances:
        inst = dict(inst)
        name = vm_name(farm, inst["name"])
        where = running_on.get(name, [])
        moving = inst.get("migrating")
        if moving and moving.get("cold"):
            if not where:  # stopped on the source: start it on the destination
                events.append(("Migrated", f"{inst['name']}: {inst['host']} -> {moving['to']} (cold: stopped, "
                                           "started there)"))
                inst["host"] = moving["to"]
                del inst["migrating"]
        elif moving:
            job = reports.get(inst["host"], {}).get("migrations", {}).get(name, {})
            job = job if job.get("attempt") == moving["attempt"] else {}
            if moving["to"] in where and (job.get("state") == "completed" or inst["host"] not in where):
                downtime = reports.get(moving["to"], {}).get("arrivals", {}).get(name, {}).get("downtime_ms", "?")
                copy = f"copied in {job['wall_ms']} ms, " if job.get("wall_ms") else ""
                took = f", {now - moving['since']:.1f} s after the request" if moving.get("since") else ""
                events.append(("Migrated", f"{inst['name']}: {inst['host']} -> {moving['to']} live, {copy}"
                                           f"downtime {downtime} ms{took}"))
                inst["host"] = moving["to"]
                del inst["migrating"]
            elif job.get("state") == "failed":
                events.append(("MigrationFailed", f"{inst['name']}: {inst['host']} -> {moving['to']}: "
                                                  f"{job.get('error')}; it stays on {inst['host']}"))
                del inst["migrating"]
            elif not job and now - moving.get("since", now) > MIGRATION_STALL_S:
                events.append(("MigrationFailed", f"{inst['name']}: {inst['host']} never started the migration "
                                                  f"to {moving['to']} (is its gatekeeper running?)"))
                del inst["migrating"]
            elif job:
                inst["migrating"] = {**moving, **{k: job[k] for k in ("state", "data_total", "data_processed")
                                                  if k in job}}
            elif not moving.get("prepared") and name in reports.get(moving["to"], {}).get("prepared", []):
                inst["migrating"] = {**moving, "prepared": True, "state": "prepared"}
        elif where and inst["host"] not in where:
            events.append(("Moved", f"{inst['name']} runs on {where[0]}, not on {inst['host']} (moved outside the "
                                    f"manager); it now belongs to {where[0]}"))
            inst["host"] = where[0]
        out.append(inst)
    return out, events


def reconcile_farm(farm: Farm, status: dict[str, Any], hosts: list[Host],
                   taken_vnet_ids: dict[tuple[str, str], int], host_reports: dict[str, dict[str, Any]],
                   now: float = 0.0) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
    """The farm's new status (instances placed, kept or gone), a one-line summary, and what was
    observed on the hosts as events. `hosts` carry the usage of every other farm already."""
    observed, events = observe(farm.name, status.get("instances", []), host_reports, now)
    current = [Instance(i["name"], i["vm"], i["host"], dict(i.get("addresses", {})), i.get("migrating"),
                        dict(i.get("macs", {}))) for i in observed]
    known = {**taken_vnet_ids, **{(farm.name, k): v for k, v in status.get("vnet_ids", {}).items()}}
    plan = plan_farm(farm, hosts, current, known)
    instances = sorted(plan.keep + plan.create, key=lambda i: i.name)
    running = {(vm, h) for h, r in host_reports.items() for vm in r.get("running", [])}
    sizes = {v.name: (v.vcpus, v.memory_mib) for v in farm.vms}
    ready = all((vm_name(farm.name, i.name), i.host) in running for i in instances)
    broken = vnet_errors(plan.vnet_ids, host_reports)
    new_status = {
        "instances": [{**{k: v for k, v in asdict(i).items() if v is not None},
                       **instance_state(vm_name(farm.name, i.name), i, running, host_reports, broken),
                       **pending_change(vm_name(farm.name, i.name), i, sizes.get(i.vm), host_reports)}
                      for i in instances],
        "vnet_ids": plan.vnet_ids,
        "unplaced": plan.unplaced,
        "conditions": {"Placed": not plan.unplaced, "Ready": ready and not plan.unplaced,
                       "Degraded": bool(plan.unplaced) or (bool(instances) and not ready) or bool(broken)},
    }
    if broken:  # a VNET a host could not make (MTU, keys...): the farm's owner sees why (audit R25)
        new_status["vnet_errors"] = [f"{h}: VNET {name}: {why}" for (h, name), why in sorted(broken.items())]
    summary = f"+{len(plan.create)} -{len(plan.delete)} ={len(plan.keep)}"
    if plan.unplaced:
        summary += f", {len(plan.unplaced)} cannot be placed"
    return new_status, summary, events


VNET_ERROR = re.compile(r"^vnet\.[a-z]+ ([0-9]+): (.*)$", re.DOTALL)  # converge's "vnet.create 5: why"


def vnet_errors(vnet_ids: dict[str, int], reports: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(host, VNET name) -> the error a host reported making or changing one of these VNETs."""
    names = {str(i): n for n, i in vnet_ids.items()}
    out = {}
    for host, report in sorted(reports.items()):
        for error in report.get("errors", []):
            m = VNET_ERROR.match(error) if isinstance(error, str) else None
            if m and m.group(1) in names:
                out[(host, names[m.group(1)])] = m.group(2)
    return out


def instance_state(name: str, inst: Instance, running: set[tuple[str, str]],
                   reports: dict[str, dict[str, Any]],
                   vnet_errors: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
    """What the hosts say of an instance: running, migrating, or pending, with the error its host
    reported for it or for one of its VNETs (a VM that fails to start says why in the farm's own
    status)."""
    if inst.migrating:
        return {"state": "migrating"}
    if (name, inst.host) in running:
        return {"state": "running"}
    report = reports.get(inst.host, {})
    error = next((e.split(": ", 1)[1] for e in report.get("errors", []) if f" {name}: " in f" {e}"), None)
    error = error or next((f"VNET {vnet}: {why}" for (h, vnet), why in sorted((vnet_errors or {}).items())
                           if h == inst.host and vnet in inst.addresses), None)
    state = {"state": "down" if report.get("state") == "down" else "pending"}
    return {**state, "error": error} if error else state


def pending_change(name: str, inst: Instance, want: tuple[int, int] | None,
                   reports: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A running VM whose size the descriptor changed keeps its old size until it restarts (a
    live VM is never restarted behind the admin's back): say so rather than stay silent."""
    have = reports.get(inst.host, {}).get("sizes", {}).get(name)
    if want is None or not isinstance(have, list) or len(have) != 2 or \
            not all(type(v) is int for v in have) or tuple(have) == want:
        return {}  # unknown (the host did not say) or unchanged
    parts = [f"{what} {a} -> {b}" for what, a, b in (("vCPUs", have[0], want[0]),
                                                      ("memory", fmt_mib(have[1]), fmt_mib(want[1]))) if a != b]
    return {"change": ", ".join(parts) + " after a stop and start"}


def vnet_hosts(farm: Farm, status: dict[str, Any], vnet: str) -> list[str]:
    """The hosts with an instance on `vnet` (arriving by migration included): the manager turns
    them into the VNET's member addresses, the only hosts its peers accept traffic from."""
    on_vnet = {v.name for v in farm.vms if any(n.vnet == vnet for n in v.nics)}
    hosts = set()
    for inst in status.get("instances", []):
        if inst.get("vm") in on_vnet:
            hosts.add(inst["host"])
            hosts.add((inst.get("migrating") or {}).get("to") or inst["host"])
    return sorted(hosts)


def host_desired(host: str, farms: list[tuple[Farm, dict[str, Any]]]) -> dict[str, Any]:
    """What `host` should run for all farms: the VNETs its VMs need, and the VMs."""
    vnets: dict[int, dict[str, Any]] = {}
    vms = []
    for farm, status in farms:
        ids = status.get("vnet_ids", {})
        vm_defs = {v.name: v for v in farm.vms}
        vnet_defs = {v.name: v for v in farm.vnets}
        for inst in status.get("instances", []):
            moving = inst.get("migrating") or {}
            vm = vm_defs.get(inst["vm"])
            if vm is None or host not in (inst["host"], moving.get("to")) or moving.get("cold"):
                continue  # not here; or moving cold: stopped everywhere until it is stopped
            nics = []
            for nic in vm.nics:
                vid = ids.get(nic.vnet)
                if vid is None:  # a VNET added to a farm that could not be planned (see its status)
                    continue
                vnets[vid] = {"id": vid, "farm": farm.name, "name": nic.vnet,
                              "security": vnet_defs[nic.vnet].security, "mtu": vnet_defs[nic.vnet].mtu,
                              "member_hosts": vnet_hosts(farm, status, nic.vnet)}
                subnet = vnet_defs[nic.vnet].subnet
                addr = inst.get("addresses", {}).get(nic.vnet)  # none yet: the farm's plan failed
                ip = f"{addr}/{subnet.prefixlen}" if addr and ipaddress.IPv4Address(addr) in subnet else None
                peers = sorted({o["addresses"][nic.vnet] for o in status["instances"]
                                if o["name"] != inst["name"] and nic.vnet in o.get("addresses", {})},
                               key=ipaddress.IPv4Address)
                mac = inst.get("macs", {}).get(nic.vnet) or nic_mac(farm.name, inst["name"], nic.vnet)
                nics.append({"vnet": vid, "mac": mac, "ip": ip,
                             "peers": peers})
            entry: dict[str, Any] = {"name": vm_name(farm.name, inst["name"]), "vcpus": vm.vcpus,
                                     "memory_mib": vm.memory_mib, "nics": nics}
            if moving and host == inst["host"] and moving.get("prepared"):  # the destination has the VNETs
                entry["migrate_to"] = {"host": moving["to"], "uri": moving["uri"], "attempt": moving["attempt"],
                                       "downtime_ms": vm.max_downtime_ms or 0}
            elif moving and host != inst["host"]:
                entry["incoming"] = True
            elif moving:
                entry["outgoing"] = True  # soon: the destination is making its VNETs
            vms.append(entry)
    return {"vnets": sorted(vnets.values(), key=lambda v: v["id"]), "vms": sorted(vms, key=lambda v: v["name"])}
