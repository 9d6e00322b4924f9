"""From a validated Farm to a plan: which instances to create, keep or delete, where new ones go
(and why), their addresses, and the VNET ids. Pure: the manager feeds it the current state and
applies the plan; `softudc apply --dry-run` prints the same plan.

Stable choices: an instance keeps its host, addresses and MACs across re-applies, so scaling web
from 2 to 3 replicas creates exactly web-2 and touches nothing else. A NIC added to a VM gets an
address and a MAC on its kept instances too (audit R10).

Uniqueness is checked, never assumed (audit R6, R26): a VNET id is kept only while no other farm
holds it, and a MAC only while no other instance on that VNET has it. Pools are walked lazily, so
planning never lists a whole subnet (audit R9).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from softudc.model.farm import Farm, VmDef
from softudc.model.hoststate import nic_mac
from softudc.placement import Group, Host, Request, charge, place

MAX_VNET_ID = 4094


class PlanError(RuntimeError):
    pass


@dataclass(frozen=True)
class Instance:
    """An instance as it is (or will be): where it runs and its address per VNET."""

    name: str
    vm: str
    host: str
    addresses: dict[str, str] = field(default_factory=dict)
    migrating: dict[str, Any] | None = None  # {to, attempt, uri, state, ...} while it moves
    macs: dict[str, str] = field(default_factory=dict)  # per VNET, unique on it


@dataclass
class FarmPlan:
    farm: str
    vnet_ids: dict[str, int]
    create: list[Instance] = field(default_factory=list)
    keep: list[Instance] = field(default_factory=list)
    delete: list[Instance] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    unplaced: dict[str, list[str]] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.create or self.delete or self.unplaced)

    def render(self) -> str:
        lines = [f"farm {self.farm}: VNETs " + ", ".join(f"{n}={i}" for n, i in sorted(self.vnet_ids.items()))]
        for inst in self.create:
            addrs = " ".join(f"{v}:{a}" for v, a in sorted(inst.addresses.items()))
            lines.append(f"  + {inst.name:16} on {inst.host:8} {addrs}  ({self.reasons.get(inst.name, '')})")
        for inst in self.delete:
            lines.append(f"  - {inst.name:16} on {inst.host}")
        for inst in self.keep:
            lines.append(f"    {inst.name:16} on {inst.host} (unchanged)")
        for name, why in self.unplaced.items():
            lines.append(f"  ! {name:16} cannot be placed:")
            lines.extend(f"      {w}" for w in why)
        if not self.changes:
            lines.append("  no changes")
        return "\n".join(lines)


def occupied(inst: Instance | dict[str, Any]) -> list[str]:
    """Hosts an instance takes room on: its own, and while it migrates, the destination too."""
    host, moving = (inst.host, inst.migrating) if isinstance(inst, Instance) else (inst["host"], inst.get("migrating"))
    return [host, moving["to"]] if moving else [host]


def allocate_vnet_ids(farm: Farm, taken: dict[tuple[str, str], int]) -> dict[str, int]:
    """A VNET id per VNET of `farm` (taken: (farm, vnet) -> id, for every live farm). An id this
    farm had is kept only while no other farm holds it: a stale id (a deleted farm's, or one in
    status written before ids were checked) must never put two farms on one segment."""
    others = {i for (f, _), i in taken.items() if f != farm.name}
    used = set(others)
    out = {}
    for vnet in farm.vnets:
        had = taken.get((farm.name, vnet.name))
        if had is not None and had not in used and 2 <= had <= MAX_VNET_ID:
            out[vnet.name] = had
            used.add(had)
    for vnet in farm.vnets:
        if vnet.name in out:
            continue
        free = next((i for i in range(2, MAX_VNET_ID + 1) if i not in used), None)  # 1: the physical network
        if free is None:
            raise PlanError(f"all {MAX_VNET_ID - 1} VNET ids are in use, so VNET {vnet.name} gets none; "
                            "delete a farm (or a VNET) first")
        used.add(free)
        out[vnet.name] = free
    return out


def _pool(subnet: ipaddress.IPv4Network, taken: set[ipaddress.IPv4Address]) -> Iterator[ipaddress.IPv4Address]:
    """Free addresses, lowest first, made one at a time: a /16 is never listed whole."""
    # .1 stays free for a gateway, by convention; statics and existing instances are skipped.
    for n in range(int(subnet.network_address) + 2, int(subnet.broadcast_address)):
        address = ipaddress.IPv4Address(n)
        if address not in taken:
            yield address


def derive_mac(farm: str, instance: str, vnet: str, attempt: int = 0) -> str:
    """The naming rule's MAC (softudc/model/hoststate.py `nic_mac`); `attempt` > 0 picks another
    one when the first is taken on the VNET. Called through this name so tests can force clashes."""
    return nic_mac(farm, instance, vnet, attempt)


def _unique_mac(farm: str, instance: str, vnet: str, used: set[str]) -> str:
    for attempt in range(len(used) + 1):  # at most len(used) names can be taken
        mac = derive_mac(farm, instance, vnet, attempt)
        if mac not in used:
            return mac
    raise PlanError(f"no free MAC for {instance} on VNET {vnet}")  # unreachable: see the loop bound


def plan_farm(farm: Farm, hosts: list[Host], current: list[Instance],
              vnet_ids: dict[tuple[str, str], int] | None = None, cpu_ratio: float = 4.0,
              mem_ratio: float = 1.0) -> FarmPlan:
    """The plan that turns `current` (this farm's instances) into what `farm` describes.
    `hosts` carry their usage by everything else (this farm's kept instances are added here)."""
    plan = FarmPlan(farm.name, allocate_vnet_ids(farm, vnet_ids or {}))
    desired = {n: vm for vm in farm.vms for n in vm.instance_names()}
    by_name = {i.name: i for i in current}
    for inst in current:
        (plan.keep if inst.name in desired else plan.delete).append(inst)
    _charge_kept(hosts, [(i, desired[i.name]) for i in plan.keep])
    new = [Request(n, vm.vcpus, vm.memory_mib, vm.group) for n, vm in desired.items() if n not in by_name]
    placement = place(hosts, new, _groups(farm), cpu_ratio, mem_ratio)
    plan.unplaced = placement.unplaced
    addressing = _Addressing(farm, plan.keep)
    plan.keep = [addressing.complete(inst, desired[inst.name]) for inst in plan.keep]
    for step in sorted(placement.steps, key=lambda s: s.request):
        vm = desired[step.request]
        plan.create.append(addressing.complete(Instance(step.request, vm.name, step.host), vm))
        plan.reasons[step.request] = step.reason
    return plan


def move_fit(farm: Farm, hosts: list[Host], current: list[Instance], instance: str, to: str,
             cpu_ratio: float = 4.0, mem_ratio: float = 1.0) -> list[str]:
    """Why `instance` cannot move to host `to` ([] when it can), by plan_farm's rules: `hosts` carry
    every other farm's usage, this farm's instances are charged as plan_farm charges them (the
    moving one stays on its host), and the move is placed like a new instance, on `to` only.
    Charges `hosts`, as plan_farm does: pass copies (Usage.hosts makes them)."""
    desired = {n: vm for vm in farm.vms for n in vm.instance_names()}
    vm = desired.get(instance)
    dest = [h for h in hosts if h.name == to]
    if vm is None or not dest:
        return [f"{instance} is not in farm {farm.name}'s descriptor" if vm is None else
                f"{to} has not reported its capacity"]
    _charge_kept(hosts, [(i, desired[i.name]) for i in current if i.name in desired])
    fit = place(dest, [Request(instance, vm.vcpus, vm.memory_mib, vm.group)], _groups(farm), cpu_ratio, mem_ratio)
    return fit.unplaced.get(instance, [])


def _groups(farm: Farm) -> list[Group]:
    return [Group(g.name, g.policy, g.max_per_host) for g in farm.groups]


def _charge_kept(hosts: list[Host], kept: list[tuple[Instance, VmDef]]) -> None:
    """What stays counts against capacity and the group rules: on its host, and while it migrates
    on the destination too."""
    host_by_name = {h.name: h for h in hosts}
    for inst, vm in kept:
        for where in occupied(inst):
            h = host_by_name.get(where)
            if h is not None:
                charge(h, Request(inst.name, vm.vcpus, vm.memory_mib, vm.group))


class _Addressing:
    """Addresses and MACs per VNET: statics by replica index, the pool for the rest; what kept
    instances have stays theirs, and what they lack (a NIC added since) is given like to a new one."""

    def __init__(self, farm: Farm, kept: list[Instance]) -> None:
        self.farm = farm
        wanted = {vm.name: {nic.vnet for nic in vm.nics} for vm in farm.vms}
        self.taken: dict[str, set[ipaddress.IPv4Address]] = {v.name: set() for v in farm.vnets}
        self.macs: dict[str, set[str]] = {v.name: set() for v in farm.vnets}
        for inst in kept:
            for vnet in wanted.get(inst.vm, set()):
                if vnet in inst.addresses:
                    self.taken[vnet].add(ipaddress.IPv4Address(inst.addresses[vnet]))
                if vnet in inst.macs:
                    self.macs[vnet].add(inst.macs[vnet])
        for vm in farm.vms:
            for nic in vm.nics:
                self.taken[nic.vnet].update(nic.addresses)
        self.pools = {v.name: _pool(v.subnet, self.taken[v.name]) for v in farm.vnets}

    def complete(self, inst: Instance, vm: VmDef) -> Instance:
        """`inst` with an address and a MAC on every VNET its VM has a NIC on (and no others)."""
        index = int(inst.name.rsplit("-", 1)[1])
        addresses: dict[str, str] = {}
        macs: dict[str, str] = {}
        for nic in vm.nics:
            have = inst.addresses.get(nic.vnet)
            chosen = have or (nic.addresses[index] if nic.addresses else next(self.pools[nic.vnet], None))
            if chosen is None:
                raise PlanError(f"VNET {nic.vnet} of farm {self.farm.name} has no free address left for "
                                f"{inst.name}; use a larger subnet or fewer replicas")
            addresses[nic.vnet] = str(chosen)
            mac = inst.macs.get(nic.vnet)
            if mac is None:  # derived as before MACs were stored, then checked against the VNET's others
                mac = _unique_mac(self.farm.name, inst.name, nic.vnet, self.macs[nic.vnet])
                self.macs[nic.vnet].add(mac)
            macs[nic.vnet] = mac
        if addresses == inst.addresses and macs == inst.macs:
            return inst
        return Instance(inst.name, inst.vm, inst.host, addresses, inst.migrating, macs)
