"""From a validated Farm to a plan: which instances to create, keep or delete, where new ones go
(and why), their addresses, and the VNET ids. Pure: the manager feeds it the current state and
applies the plan; `softudc apply --dry-run` prints the same plan.

Stable choices: an instance keeps its host and addresses across re-applies, so scaling web from
2 to 3 replicas creates exactly web-2 and touches nothing else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from softudc.model.farm import Farm
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
    """A VNET id per VNET of `farm`, keeping ids already given (taken: (farm, vnet) -> id)."""
    used = set(taken.values())
    out = {}
    for vnet in farm.vnets:
        key = (farm.name, vnet.name)
        if key in taken:
            out[vnet.name] = taken[key]
            continue
        free = next((i for i in range(2, MAX_VNET_ID + 1) if i not in used), None)  # 1: the physical network
        if free is None:
            raise PlanError("all 4093 VNET ids are in use; delete a farm first")
        used.add(free)
        out[vnet.name] = free
    return out


def _pool(farm: Farm, vnet: str, taken: set[ipaddress.IPv4Address]) -> list[ipaddress.IPv4Address]:
    subnet = next(v.subnet for v in farm.vnets if v.name == vnet)
    # .1 stays free for a gateway, by convention; statics and existing instances are skipped.
    return [a for a in list(subnet.hosts())[1:] if a not in taken]


def plan_farm(farm: Farm, hosts: list[Host], current: list[Instance],
              vnet_ids: dict[tuple[str, str], int] | None = None, cpu_ratio: float = 4.0,
              mem_ratio: float = 1.0) -> FarmPlan:
    """The plan that turns `current` (this farm's instances) into what `farm` describes.
    `hosts` carry their usage by everything else (this farm's kept instances are added here)."""
    plan = FarmPlan(farm.name, allocate_vnet_ids(farm, vnet_ids or {}))
    desired = {n: vm for vm in farm.vms for n in vm.instance_names()}
    by_name = {i.name: i for i in current}
    host_by_name = {h.name: h for h in hosts}
    groups = [Group(g.name, g.policy, g.max_per_host) for g in farm.groups]
    for inst in current:
        if inst.name not in desired:
            plan.delete.append(inst)
            continue
        plan.keep.append(inst)
        vm = desired[inst.name]
        for where in occupied(inst):  # what stays counts against capacity and the group rules
            h = host_by_name.get(where)
            if h is not None:
                charge(h, Request(inst.name, vm.vcpus, vm.memory_mib, vm.group))
    new = [Request(n, vm.vcpus, vm.memory_mib, vm.group) for n, vm in desired.items() if n not in by_name]
    placement = place(hosts, new, groups, cpu_ratio, mem_ratio)
    plan.unplaced = placement.unplaced
    # Addresses: statics by replica index, the pool for the rest, kept for kept instances.
    taken: dict[str, set[ipaddress.IPv4Address]] = {v.name: set() for v in farm.vnets}
    for inst in plan.keep:
        for vnet, addr in inst.addresses.items():
            taken.setdefault(vnet, set()).add(ipaddress.IPv4Address(addr))
    for vm in farm.vms:
        for nic in vm.nics:
            taken[nic.vnet].update(nic.addresses)
    pools = {v.name: iter(_pool(farm, v.name, taken[v.name])) for v in farm.vnets}
    for step in sorted(placement.steps, key=lambda s: s.request):
        vm = desired[step.request]
        index = int(step.request.rsplit("-", 1)[1])
        addresses: dict[str, str] = {}
        for nic in vm.nics:
            chosen = nic.addresses[index] if nic.addresses else next(pools[nic.vnet], None)
            if chosen is None:
                raise PlanError(f"VNET {nic.vnet} of farm {farm.name} has no free address left")
            addresses[nic.vnet] = str(chosen)
        plan.create.append(Instance(step.request, vm.name, step.host, addresses))
        plan.reasons[step.request] = step.reason
    return plan
