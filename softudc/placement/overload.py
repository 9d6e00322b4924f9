"""Whether a cluster is overloaded, and which fences are due a look (issue 12, item 7: "a failure
that overloads the remaining hosts triggers the balancer"). Pure.

A cluster is overloaded when any of these holds, each a reason naming the hosts or the figures:

- a host's allocations exceed its capacity (the score's hard-rule break);
- a ready host's measured use (CPU or memory, normalised by its capacity; a VM not yet measured
  counts its allocation) is over `hot`;
- the score's spread (see `score`) is over `spread`.

After a host is fenced and its VMs restarted elsewhere, the leader looks, once the restarted VMs
had `settle_s` to boot and be measured, and until `watch_s` after the fence; the first time it
finds the cluster overloaded it runs a rebalance plan, and it looks no more for that fence
(`due`: fences confirmed in the window that have no rebalance yet).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from softudc.placement.cluster import Cluster
from softudc.placement.score import score


@dataclass(frozen=True)
class Trigger:
    spread: float = 0.25  # the score's spread over this: overloaded (0.25: one host ~35 % busier than the rest)
    hot: float = 0.85  # a ready host's CPU or memory use over this share of its capacity
    settle_s: float = 60.0  # after a fence: the restarted VMs boot and the load's short mean (1 min) sees them
    watch_s: float = 900.0  # after a fence: an overload later than this is the balancer's usual business

    def __post_init__(self) -> None:
        if self.spread <= 0 or not 0 < self.hot <= 1:
            raise ValueError(f"HA rebalance trigger: spread {self.spread} must be > 0 and hot {self.hot} "
                             "in (0, 1]")
        if not 0 <= self.settle_s < self.watch_s:
            raise ValueError(f"HA rebalance trigger: settle {self.settle_s} s must be >= 0 and under the watch "
                             f"{self.watch_s} s")


def hot_hosts(cluster: Cluster, hot: float) -> list[str]:
    """Ready hosts using more than `hot` of their CPU or memory: "h2 cpu 92%", sorted by name."""
    cpu: dict[str, float] = defaultdict(float)
    mem: dict[str, float] = defaultdict(float)
    for v in cluster.vms:
        cpu[v.host] += v.cpu
        mem[v.host] += v.mem
    out = []
    for h in sorted(cluster.hosts, key=lambda h: h.name):
        if h.state != "ready":
            continue
        worst = max((cpu[h.name] / h.vcpus, "cpu"), (mem[h.name] / h.memory_mib, "memory"))
        if worst[0] > hot:
            out.append(f"{h.name} {worst[1]} {worst[0]:.0%}")
    return out


def overloaded(cluster: Cluster, t: Trigger) -> list[str]:
    """Why the cluster is overloaded, one reason per rule broken; empty when it is not."""
    b = score(cluster)
    out = []
    if b.over_capacity:
        out.append("over capacity: " + ", ".join(b.over_capacity[:5]))
    hot = hot_hosts(cluster, t.hot)
    if hot:
        out.append(f"over {t.hot:.0%} of capacity: " + ", ".join(hot[:5]) + (" ..." if len(hot) > 5 else ""))
    if b.spread > t.spread:
        out.append(f"spread {b.spread:.3f} over {t.spread:g}")
    return out


def due(records: dict[str, dict[str, Any]], now: float, t: Trigger) -> list[str]:
    """The fenced hosts (HA records, kind `hafence`) whose fence is between settle_s and watch_s
    old and that have had no rebalance yet, sorted."""
    return sorted(h for h, r in records.items() if r.get("state") == "fenced" and "rebalance" not in r
                  and t.settle_s <= now - float(r.get("at", 0.0)) < t.watch_s)
