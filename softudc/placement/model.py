"""What placement works on: hosts with capacity and usage, requests (one per VM instance), groups."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Host:
    name: str
    vcpus: int
    memory_mib: int
    state: str = "ready"  # ready | draining | maintenance | standby | down
    used_vcpus: int = 0
    used_memory_mib: int = 0
    groups: dict[str, int] = field(default_factory=dict)  # group -> members already here


@dataclass(frozen=True)
class Request:
    name: str  # instance name, e.g. web-0
    vcpus: int
    memory_mib: int
    group: str | None = None


@dataclass(frozen=True)
class Group:
    name: str
    policy: str  # affinity | anti-affinity | soft-affinity | soft-anti-affinity
    max_per_host: int | None = None

    @property
    def limit(self) -> int | None:
        """Members a host may hold under this group's hard rule (None: no limit)."""
        if self.policy == "anti-affinity":
            return self.max_per_host or 1
        return None


@dataclass(frozen=True)
class Placement:
    request: str
    host: str
    reason: str
    score: float


@dataclass
class Plan:
    steps: list[Placement] = field(default_factory=list)
    unplaced: dict[str, list[str]] = field(default_factory=dict)  # request -> why, per host (bounded)

    @property
    def placed(self) -> int:
        return len(self.steps)

    def hosts_used(self) -> int:
        return len({s.host for s in self.steps})


def fmt_mib(mib: float) -> str:
    return f"{mib / 1024:.1f}Gi" if mib >= 1024 else f"{mib:.0f}Mi"
