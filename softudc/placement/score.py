"""The cluster score: one number, lower is better, with a printable breakdown.

    score = spread + PENALTY * (hard-rule breaks)
    spread = sqrt(var(cpu_h / vcpus_h) + var(mem_h / memory_mib_h))   over ready hosts

cpu_h / mem_h are the summed loads (measured use, else allocation) of the VMs on host h, so the
spread is the root of the summed population variances of normalised CPU and memory use; for a
fixed total load it falls exactly when the sum of squared normalised loads falls (the objective the
CP-SAT reference in `softudc bench balance` minimises). Hard-rule breaks, each counted once:
a VM on a host that is not ready (draining, maintenance, standby, down), a group member beyond its
anti-affinity limit on a host, a host whose allocations exceed its capacity (counted 1 + the excess
fraction, max(alloc/capacity) - 1 over CPU and memory, so every VM moved off it lowers the score
even before it fits). PENALTY (10) is above
any spread a real cluster has, so removing a break always beats any balance gain.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from softudc.placement.cluster import Cluster

PENALTY = 10.0


@dataclass
class Breakdown:
    spread_cpu: float  # population standard deviation of normalised CPU use over ready hosts
    spread_mem: float
    off_ready: list[str] = field(default_factory=list)  # "vm@host (state)"
    anti_affinity: list[str] = field(default_factory=list)  # "group@host: n > limit"
    over_capacity: list[str] = field(default_factory=list)  # "host: cpu a/b mem c/d"
    over_excess: float = 0.0  # summed excess fractions of the hosts over capacity

    @property
    def spread(self) -> float:
        return math.sqrt(self.spread_cpu ** 2 + self.spread_mem ** 2)

    @property
    def breaks(self) -> int:
        return len(self.off_ready) + len(self.anti_affinity) + len(self.over_capacity)

    @property
    def penalty(self) -> float:
        return PENALTY * (self.breaks + self.over_excess)

    @property
    def total(self) -> float:
        return self.spread + self.penalty

    def __str__(self) -> str:
        lines = [f"score {self.total:.4f}", f"  spread cpu {self.spread_cpu:.4f}",
                 f"  spread mem {self.spread_mem:.4f}", f"  spread     {self.spread:.4f}"]
        for label, items in (("vm on a host not ready", self.off_ready), ("anti-affinity broken", self.anti_affinity),
                             ("over capacity", self.over_capacity)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items) - 10} more)" if len(items) > 10 else "")
                lines.append(f"  penalty {PENALTY * len(items):g}: {label} x{len(items)}: {shown}")
        return "\n".join(lines)


def over_excess(alloc_c: float, cap_c: float, alloc_m: float, cap_m: float) -> float:
    return max(0.0, alloc_c / cap_c - 1.0, alloc_m / cap_m - 1.0)


def over_units(alloc_c: float, cap_c: float, alloc_m: float, cap_m: float) -> float:
    """The penalty units (before PENALTY) of one host for its allocations: 0 when they fit."""
    if alloc_c > cap_c or alloc_m > cap_m:
        return 1.0 + over_excess(alloc_c, cap_c, alloc_m, cap_m)
    return 0.0


def _std(xs: list[float]) -> float:
    if not xs:
        return 0.0
    mean = sum(xs) / len(xs)
    return math.sqrt(max(0.0, sum(x * x for x in xs) / len(xs) - mean * mean))


def score(cluster: Cluster) -> Breakdown:
    """The score of `cluster` with what makes it up (an independent, straightforward computation)."""
    hosts = {h.name: h for h in cluster.hosts}
    cpu: dict[str, float] = defaultdict(float)
    mem: dict[str, float] = defaultdict(float)
    alloc_c: Counter[str] = Counter()
    alloc_m: Counter[str] = Counter()
    members: Counter[tuple[str, str]] = Counter()
    off: list[str] = []
    for v in cluster.vms:
        cpu[v.host] += v.cpu
        mem[v.host] += v.mem
        alloc_c[v.host] += v.vcpus
        alloc_m[v.host] += v.memory_mib
        if v.group is not None:
            members[(v.group, v.host)] += 1
        if hosts[v.host].state != "ready":
            off.append(f"{v.name}@{v.host} ({hosts[v.host].state})")
    ready = [h for h in cluster.hosts if h.state == "ready"]
    b = Breakdown(_std([cpu[h.name] / h.vcpus for h in ready]), _std([mem[h.name] / h.memory_mib for h in ready]),
                  off_ready=off)
    for (g, where), n in sorted(members.items()):
        limit = cluster.groups[g].limit
        if limit is not None and n > limit:
            b.anti_affinity.extend([f"{g}@{where}: {n} > {limit}"] * (n - limit))
    for h in cluster.hosts:
        if alloc_c[h.name] > h.vcpus or alloc_m[h.name] > h.memory_mib:
            b.over_capacity.append(f"{h.name}: cpu {alloc_c[h.name]}/{h.vcpus} mem {alloc_m[h.name]}/{h.memory_mib}")
            b.over_excess += over_excess(alloc_c[h.name], h.vcpus, alloc_m[h.name], h.memory_mib)
    return b
