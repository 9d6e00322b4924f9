"""What each host should run, from the farms' stored statuses: the contract's DesiredState
(softudc/model/hoststate.py). Pure but for the VNET keys, which the caller hands in.

Two steps: `host_desired` drafts it from the farms alone; `desired_state` adds what needs every
host's report and the key store (each VNET's `keys`, and its `members`: the underlay addresses of
the hosts with an instance on it) and validates the result, so the manager never serves what a
gatekeeper would refuse. A host gets it in the contract version
its latest report claims (a rolling upgrade goes managers first).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from softudc.manager import migration
from softudc.manager.reports import ipv4_or_none
from softudc.manager.volume_moves import Move
from softudc.manager.volumes import VolumeView
from softudc.model.farm import Farm, VmDef
from softudc.model.hoststate import CONTRACT_VERSION, SERVED, DesiredState, nic_mac, parse, vm_name

Keys = Callable[[str, str], dict[str, Any]]  # (farm, VNET) -> {send_epoch, secrets}


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
    """What `host` should run for all farms, drafted (a DesiredState document without VNET keys
    and members): the VNETs its VMs need, and the VMs."""
    return _draft(host, [FarmIndex(farm, status) for farm, status in farms])


class FarmIndex:
    """One farm's status indexed once for the drafts of many hosts: its instances by the hosts
    they are on (or moving to), and each VNET's addresses in order (a generation's thousand hosts
    each walked every instance, and sorted each VNET's addresses again, before)."""

    def __init__(self, farm: Farm, status: dict[str, Any]) -> None:
        self.farm, self.status = farm, status
        self.vm_defs = {v.name: v for v in farm.vms}
        self.vnet_defs = {v.name: v for v in farm.vnets}
        self.on_host: dict[str, list[dict[str, Any]]] = {}
        for inst in status.get("instances", []):
            moving = inst.get("migrating") or {}
            for h in dict.fromkeys((inst["host"], moving.get("to"))):
                if h is not None:
                    self.on_host.setdefault(h, []).append(inst)
        self._addresses: dict[str, tuple[list[str], dict[str, set[str]]]] = {}

    def peers(self, vnet: str, name: str) -> list[str]:
        """The addresses on `vnet` of the farm's instances other than `name`, in address order."""
        if vnet not in self._addresses:
            owners: dict[str, set[str]] = {}
            for o in self.status["instances"]:
                if vnet in o.get("addresses", {}):
                    owners.setdefault(o["addresses"][vnet], set()).add(o["name"])
            self._addresses[vnet] = (sorted(owners, key=ipaddress.IPv4Address), owners)
        ordered, owners = self._addresses[vnet]
        return [a for a in ordered if owners[a] != {name}]


def _draft(host: str, farms: list[FarmIndex], vols: VolumeView | None = None) -> dict[str, Any]:
    vnets: dict[int, dict[str, Any]] = {}
    vms = []
    for index in farms:
        farm = index.farm
        for inst in index.on_host.get(host, []):
            moving = inst.get("migrating") or {}
            vm = index.vm_defs.get(inst["vm"])
            if vm is None or moving.get("cold"):
                continue  # moving cold: stopped everywhere until it is stopped
            disks = vols.disks(farm.name, inst["name"], vm) if vols is not None and vm.volumes else []
            vms.append({"name": vm_name(farm.name, inst["name"]), "vcpus": vm.vcpus, "memory_mib": vm.memory_mib,
                        "nics": _nics(index, inst, vm, vnets), **_handover(host, inst, vm, farm.name, vols),
                        **({"disks": disks} if disks else {})})
    draft = {"vnets": sorted(vnets.values(), key=lambda v: v["id"]), "vms": sorted(vms, key=lambda v: v["name"])}
    if vols is not None and (held := vols.for_host(host)):
        draft["volumes"] = held  # contract 3: what this host's storage service holds
    return draft


def _nics(index: FarmIndex, inst: dict[str, Any], vm: VmDef, vnets: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The instance's NICs; the VNETs they plug into are added to `vnets`."""
    farm, ids = index.farm, index.status.get("vnet_ids", {})
    nics = []
    for nic in vm.nics:
        vid = ids.get(nic.vnet)
        if vid is None:  # a VNET added to a farm that could not be planned (see its status)
            continue
        vdef = index.vnet_defs[nic.vnet]
        vnets[vid] = {"id": vid, "farm": farm.name, "name": nic.vnet, "security": vdef.security, "mtu": vdef.mtu}
        addr = inst.get("addresses", {}).get(nic.vnet)  # none yet: the farm's plan failed
        ip = f"{addr}/{vdef.subnet.prefixlen}" if addr and ipaddress.IPv4Address(addr) in vdef.subnet else None
        mac = inst.get("macs", {}).get(nic.vnet) or nic_mac(farm.name, inst["name"], nic.vnet)
        nics.append({"vnet": vid, "mac": mac, "ip": ip, "peers": index.peers(nic.vnet, inst["name"])})
    return nics


def _handover(host: str, inst: dict[str, Any], vm: VmDef, farm: str = "",
              vols: VolumeView | None = None) -> dict[str, Any]:
    """What this host does about a moving instance (or one that left by migration). The source
    migrates once the destination has the VNETs and the storage hosts admit it to the disks."""
    moving = inst.get("migrating") or {}
    admitted = vols is None or not vm.volumes or vols.admit(farm, inst["name"], vm, moving.get("to", ""))
    if moving and host == inst["host"] and migration.handed_over(moving) and admitted:
        return {"migrate_to": {"host": moving["to"], "uri": moving["uri"], "attempt": moving["attempt"],
                               "downtime_ms": vm.max_downtime_ms or 0}}
    if moving and host != inst["host"]:
        return {"incoming": True}
    if moving:
        return {"outgoing": True}  # soon: the destination is making its VNETs
    if inst.get("restart"):  # it left by that migration attempt; booting it here again is safe
        return {"restart_departed": inst["restart"]}
    return {}


class Members:
    """Each VNET's members, worked out once per read of the farms and reports (every host on a
    VNET gets the same list; a generation's 500 long polls need it once, not 500 times): the
    underlay addresses of the hosts with an instance on it, when all are known (else None: the
    hosts' configured members apply), and of the hosts that carry it anyway (an admin's port)."""

    def __init__(self, farms: list[tuple[Farm, dict[str, Any]]], reports: dict[str, dict[str, Any]]) -> None:
        self._farms = {farm.name: (farm, status) for farm, status in farms}
        self._addresses = {h: a for h, r in reports.items() if (a := ipv4_or_none(r.get("underlay"))) is not None}
        self._carrying: dict[int, list[str]] = {}  # VNET id -> hosts (with a known address) carrying it
        for h, r in sorted(reports.items()):
            if h in self._addresses:
                for vid in r.get("vnets") or []:
                    self._carrying.setdefault(vid, []).append(h)
        self._known: dict[tuple[str, str, int], list[str] | None] = {}

    def __call__(self, farm: str, vnet: str, vid: int) -> list[str] | None:
        key = (farm, vnet, vid)
        if key not in self._known:
            hosts = vnet_hosts(*self._farms[farm], vnet)
            known = all(h in self._addresses for h in hosts)
            self._known[key] = sorted({self._addresses[h] for h in [*hosts, *self._carrying.get(vid, [])]},
                                      key=ipaddress.IPv4Address) if known else None
        return self._known[key]


def desired_state(host: str, farms: list[tuple[Farm, dict[str, Any]]], reports: dict[str, dict[str, Any]],
                  keys: Keys, members: Members | None = None, index: list[FarmIndex] | None = None,
                  vols: VolumeView | None = None) -> DesiredState:
    """What `host` should run, complete and validated (ContractError would be a manager bug).
    `members`, `index`, `vols`: shared by the hosts of one read of farms and reports (made here if
    not given)."""
    vols = vols if vols is not None else VolumeView(farms, reports)
    draft = _draft(host, index if index is not None else [FarmIndex(f, st) for f, st in farms], vols)
    members = members or Members(farms, reports)
    for v in draft["vnets"]:
        # Every VNET has keys, `none` ones too: they authenticate its VARP (audit R18).
        v["keys"] = keys(v["farm"], v["name"])
        if (addresses := members(v["farm"], v["name"], v["id"])) is not None:
            v["members"] = addresses
    return parse(DesiredState, {"contract": CONTRACT_VERSION, **draft})


def served_version(report: dict[str, Any] | None) -> int:
    """The contract version a host gets its desired state in: the one its report claims (a report
    with none is version 1); the newest this manager speaks before it has reported."""
    if not report:
        return CONTRACT_VERSION
    version = report.get("contract", 1)
    return version if type(version) is int and version in SERVED else CONTRACT_VERSION


def desired_json(host: str, farms: list[tuple[Farm, dict[str, Any]]], reports: dict[str, dict[str, Any]],
                 keys: Keys, members: Members | None = None, index: list[FarmIndex] | None = None,
                 vols: VolumeView | None = None) -> dict[str, Any]:
    """`desired_state` as JSON in the version `host` speaks (the etag is a hash of this)."""
    state = desired_state(host, farms, reports, keys, members, index, vols)
    return state.for_contract(served_version(reports.get(host)))


def desired_json_many(hosts: Iterable[str], farms: list[tuple[Farm, dict[str, Any]]],
                      reports: dict[str, dict[str, Any]], keys: Keys) -> dict[str, dict[str, Any]]:
    """`desired_json` of each of `hosts` from one read of farms and reports (members worked out once)."""
    inputs = DesiredInputs(farms, reports, keys)
    return {host: inputs.json(host) for host in hosts}


class DesiredInputs:
    """What every host's desired state is made from, read once: the farms, the reports, each VNET's
    members and keys. A long-poll generation keeps one for all its hosts, so a host that asks after
    the generation moved costs its own state, not another read of every farm and report (R11 at
    thousands of hosts: that was O(hosts^2) per generation). Read it, never change it."""

    def __init__(self, farms: list[tuple[Farm, dict[str, Any]]], reports: dict[str, dict[str, Any]],
                 keys: Keys, volume_key: Callable[[str], str] | None = None,
                 moves: Mapping[str, Move] | None = None, objects: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.farms, self.reports = farms, reports
        self.keys: Keys = functools.cache(keys)  # each VNET's keys read and derived once for all hosts
        self.members = Members(farms, reports)  # each VNET's members worked out once
        self.index = [FarmIndex(f, status) for f, status in farms]  # each farm's instances by host, once
        self.vols = VolumeView(farms, reports, volume_key, moves, objects)  # placed once (keys, moves, objects)

    def json(self, host: str) -> dict[str, Any]:
        """`desired_json` of `host` from these inputs."""
        return desired_json(host, self.farms, self.reports, self.keys, self.members, self.index, self.vols)
