"""What the balancer works on: a snapshot of the cluster (hosts, VMs with measured use, groups).

Pure dataclasses. A VM's load is its measured use when given (`cpu_use` in cores, `mem_use_mib`),
else its allocation (`vcpus`, `memory_mib`); capacity checks always use allocations, as placement
does. `fingerprint` hashes everything a plan depends on, so executing a plan can refuse when the
cluster changed since it was computed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from softudc.placement.model import Group

HOST_STATES = ("ready", "draining", "maintenance", "standby", "down")


@dataclass(frozen=True)
class BHost:
    name: str
    vcpus: int
    memory_mib: int
    state: str = "ready"  # one of HOST_STATES

    def __post_init__(self) -> None:
        if self.state not in HOST_STATES:
            raise ValueError(f"host {self.name}: state {self.state!r} is not one of {', '.join(HOST_STATES)}")
        if self.vcpus <= 0 or self.memory_mib <= 0:
            raise ValueError(f"host {self.name}: vcpus and memory_mib must be > 0 (got {self.vcpus}, "
                             f"{self.memory_mib})")


@dataclass(frozen=True)
class BVm:
    name: str
    host: str
    vcpus: int
    memory_mib: int
    cpu_use: float | None = None  # cores, measured (smoothed)
    mem_use_mib: float | None = None
    group: str | None = None
    moved_at: float | None = None  # unix time of its last migration (cooldown)

    @property
    def cpu(self) -> float:
        return float(self.vcpus if self.cpu_use is None else self.cpu_use)

    @property
    def mem(self) -> float:
        return float(self.memory_mib if self.mem_use_mib is None else self.mem_use_mib)


@dataclass
class Cluster:
    hosts: list[BHost]
    vms: list[BVm]
    groups: dict[str, Group] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first VM that sits on an unknown host or names an unknown group."""
        names = {h.name for h in self.hosts}
        if len(names) != len(self.hosts):
            raise ValueError("hosts: duplicate host names")
        for v in self.vms:
            if v.host not in names:
                raise ValueError(f"vm {v.name}: host {v.host!r} is not in the cluster")
            if v.group is not None and v.group not in self.groups:
                raise ValueError(f"vm {v.name}: group {v.group!r} is not defined")

    def fingerprint(self) -> str:
        data = {
            "hosts": sorted((h.name, h.vcpus, h.memory_mib, h.state) for h in self.hosts),
            "vms": sorted((v.name, v.host, v.vcpus, v.memory_mib, v.group or "") for v in self.vms),
            "groups": sorted((g.name, g.policy, g.max_per_host or 0) for g in self.groups.values()),
        }
        return hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()[:16]

    def moved(self, moves: dict[str, str], now: float | None = None) -> Cluster:
        """A copy with the VMs named in `moves` (vm -> destination host) on their new hosts."""
        vms = [BVm(v.name, moves[v.name], v.vcpus, v.memory_mib, v.cpu_use, v.mem_use_mib, v.group,
                   now if now is not None else v.moved_at) if v.name in moves else v for v in self.vms]
        return Cluster(list(self.hosts), vms, dict(self.groups))
