"""Stored farms as the controllers need them, computed once rather than on every call (audit R11):
the validated Farm of a descriptor (parsed once per descriptor text, not once per reconcile, host
report and long-poll wake-up), and the usage all farms make of the hosts (summed once per
reconcile; each farm is then planned against the total less its own share).
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from softudc.manager.planner import occupied
from softudc.manager.store import Obj
from softudc.model.farm import Farm, validate
from softudc.model.source import DescriptorError
from softudc.placement import Host

CACHE_SIZE = 4096  # descriptors; more than the farms a manager holds (each is at most 1 MiB of text)


class FarmCache:
    """Validated farms by (name, digest of the descriptor). A descriptor that no longer validates
    (stored before a rule was added) is remembered as its error, so it is not parsed again either."""

    # Such a farm is not planned again (it is Degraded until applied again) but what it runs keeps
    # running and counting against its hosts: `for_hosts` reads it without the newer limits.

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._farms: OrderedDict[tuple[str, str, bool], Farm | DescriptorError] = OrderedDict()

    def farm(self, obj: Obj, strict: bool = True) -> Farm:
        """The stored farm's descriptor, validated; raises DescriptorError."""
        text = str(obj.spec.get("descriptor", ""))
        key = (obj.name, hashlib.sha256(text.encode()).hexdigest(), strict)
        found = self._farms.get(key)
        if found is None:
            try:
                found = validate(text, obj.name, strict=strict)
            except DescriptorError as e:
                found = e
            self._farms[key] = found
            while len(self._farms) > self.size:
                self._farms.popitem(last=False)
        else:
            self._farms.move_to_end(key)
        if isinstance(found, DescriptorError):
            raise found
        return found

    def add(self, name: str, text: str, farm: Farm) -> None:
        """A descriptor the caller has just validated (an apply): the controllers' pass that plans
        it finds it here instead of parsing it again (one parse per revision)."""
        self._farms[(name, hashlib.sha256(text.encode()).hexdigest(), True)] = farm
        while len(self._farms) > self.size:
            self._farms.popitem(last=False)

    def farm_or_none(self, obj: Obj) -> Farm | None:
        try:
            return self.farm(obj)
        except DescriptorError:
            return None

    def for_hosts(self, obj: Obj) -> Farm | None:
        """The farm as its hosts run it: validated, or failing that, validated without the limits
        added since it was stored; None when even that fails."""
        try:
            return self.farm(obj)
        except DescriptorError:
            try:
                return self.farm(obj, strict=False)
            except DescriptorError:
                return None


FARMS = FarmCache()  # validation is a pure function of the text: one cache serves every Manager


@dataclass
class _Share:
    vcpus: int = 0
    memory_mib: int = 0
    groups: Counter[str] = field(default_factory=Counter)

    def add(self, other: _Share, sign: int = 1) -> None:
        self.vcpus += sign * other.vcpus
        self.memory_mib += sign * other.memory_mib
        for g, n in other.groups.items():
            self.groups[g] += sign * n


def _shares(name: str, farm: Farm | None, status: dict[str, Any]) -> dict[str, _Share]:
    """What one farm's instances take of each host (the destination too while one moves). A farm
    whose descriptor does not validate takes nothing that can be known (as before)."""
    out: dict[str, _Share] = {}
    if farm is None:
        return out
    vms = {v.name: v for v in farm.vms}
    for inst in status.get("instances", []):
        vm = vms.get(inst.get("vm", ""))
        if vm is None:
            continue
        for where in occupied(inst):
            share = out.setdefault(where, _Share())
            share.vcpus += vm.vcpus
            share.memory_mib += vm.memory_mib
            if vm.group:
                share.groups[f"{name}/{vm.group}"] += 1
    return out


class Usage:
    """Every farm's share of every host, summed once; `hosts(base, farm)` gives the hosts as one
    farm's plan sees them (everything but its own instances, which the planner counts itself)."""

    def __init__(self, farms: list[tuple[str, Farm | None, dict[str, Any]]]) -> None:
        self._by_farm: dict[str, dict[str, _Share]] = {}
        self._total: dict[str, _Share] = {}
        for name, farm, status in farms:
            self.update(name, farm, status)

    def update(self, name: str, farm: Farm | None, status: dict[str, Any]) -> None:
        """Replace what `name` takes (after its status changed)."""
        for host, share in self._by_farm.pop(name, {}).items():
            self._total[host].add(share, -1)
        self._by_farm[name] = _shares(name, farm, status)
        for host, share in self._by_farm[name].items():
            self._total.setdefault(host, _Share()).add(share)

    def hosts(self, base: list[Host], farm: str | None = None) -> list[Host]:
        """Copies of `base` charged with every farm's share but `farm`'s."""
        out = []
        for h in base:
            used = _Share()
            used.add(self._total.get(h.name, _Share()))
            used.add(self._by_farm.get(farm or "", {}).get(h.name, _Share()), -1)
            out.append(replace(h, used_vcpus=h.used_vcpus + used.vcpus,
                               used_memory_mib=h.used_memory_mib + used.memory_mib,
                               groups=dict(Counter(h.groups) + +used.groups)))  # unary +: counts above 0
        return out
