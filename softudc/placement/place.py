"""Placing VM instances on hosts.

`place` spreads: every request goes to the ready host with the most free capacity (the larger
of its free CPU and memory shares after overcommit) that satisfies the request's group. Hosts sit
in a heap keyed by that score, so a request costs O(log hosts) plus the hosts its group rules
out; requests go largest first (memory, then vCPUs), as bin packing heuristics do. Affinity
groups follow their first member's host. When nothing fits, the plan says why for each host
(bounded to the first few, with counts by reason for the rest).

`place_ffd` is the first-fit-decreasing baseline the benchmark compares against: largest first,
each to the first host (in a fixed order) with room, found with a segment tree.

`check` verifies a plan independently: capacity with overcommit and every hard group rule.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable

from softudc.placement.model import Group, Host, Placement, Plan, Request, fmt_mib

MAX_REASONS = 8


def _free(h: Host, cpu_ratio: float, mem_ratio: float) -> tuple[float, float]:
    return h.vcpus * cpu_ratio - h.used_vcpus, h.memory_mib * mem_ratio - h.used_memory_mib


def _score(h: Host, cpu_ratio: float, mem_ratio: float) -> float:
    cpu, mem = _free(h, cpu_ratio, mem_ratio)
    return min(cpu / (h.vcpus * cpu_ratio), mem / (h.memory_mib * mem_ratio))


def _why_not(h: Host, r: Request, groups: dict[str, Group], cpu_ratio: float, mem_ratio: float) -> str | None:
    if h.state != "ready":
        return f"{h.name}: {h.state}"
    cpu, mem = _free(h, cpu_ratio, mem_ratio)
    if mem < r.memory_mib:
        return f"{h.name}: memory {fmt_mib(mem)} free < {fmt_mib(r.memory_mib)}"
    if cpu < r.vcpus:
        return f"{h.name}: vCPUs {cpu:g} free < {r.vcpus} (overcommit {cpu_ratio:g})"
    g = groups.get(r.group) if r.group else None
    if g is not None and g.limit is not None and h.groups.get(g.name, 0) >= g.limit:
        return f"{h.name}: anti-affinity group {g.name} already has {h.groups[g.name]} member(s) here (max {g.limit})"
    return None


def charge(h: Host, r: Request) -> None:
    """Count `r` against `h`: its capacity and its groups (what runs there already, or is placed)."""
    h.used_vcpus += r.vcpus
    h.used_memory_mib += r.memory_mib
    if r.group:
        h.groups[r.group] = h.groups.get(r.group, 0) + 1


def _explain(hosts: Iterable[Host], r: Request, groups: dict[str, Group], cpu_ratio: float,
             mem_ratio: float, note: str = "") -> list[str]:
    reasons = [w for h in hosts if (w := _why_not(h, r, groups, cpu_ratio, mem_ratio))]
    if not reasons and not note:
        reasons = ["there are no hosts (none has joined and reported its capacity)"]
    if note:
        reasons.insert(0, note)
    if len(reasons) <= MAX_REASONS:
        return reasons
    kinds = Counter(w.split(": ", 1)[1].split(" ")[0] for w in reasons[MAX_REASONS:])
    more = ", ".join(f"{n} more: {k}" for k, n in kinds.most_common())
    return [*reasons[:MAX_REASONS], f"... {more}"]


def _order(requests: list[Request]) -> list[Request]:
    return sorted(requests, key=lambda r: (-r.memory_mib, -r.vcpus, r.name))


def place(hosts: list[Host], requests: list[Request], groups: list[Group] | None = None,
          cpu_ratio: float = 4.0, mem_ratio: float = 1.0) -> Plan:
    """Place `requests` on `hosts` (whose usage is updated) and return the plan."""
    spread = _Spread(hosts, {g.name: g for g in groups or []}, cpu_ratio, mem_ratio)
    for r in _order(requests):
        spread.place(r)
    return spread.plan


class _Spread:
    """`place`'s state from one request to the next: the hosts' score heap, the plan so far and
    the host each affinity group went to."""

    def __init__(self, hosts: list[Host], gmap: dict[str, Group], cpu_ratio: float, mem_ratio: float) -> None:
        self.hosts = hosts
        self.gmap = gmap
        self.cpu_ratio = cpu_ratio
        self.mem_ratio = mem_ratio
        self.plan = Plan()
        self.heap = [(-self.score(h), i) for i, h in enumerate(hosts) if h.state == "ready"]
        heapq.heapify(self.heap)
        self.affinity_host: dict[str, int] = {}

    def score(self, h: Host) -> float:
        return _score(h, self.cpu_ratio, self.mem_ratio)

    def why_not(self, h: Host, r: Request) -> str | None:
        return _why_not(h, r, self.gmap, self.cpu_ratio, self.mem_ratio)

    def place(self, r: Request) -> None:
        g = self.gmap.get(r.group) if r.group else None
        if (g is not None and g.policy in ("affinity", "soft-affinity") and g.name in self.affinity_host
                and self._follow_group(r, g)):
            return
        chosen = self._pick(r, g)
        if chosen is None:
            self.plan.unplaced[r.name] = _explain(self.hosts, r, self.gmap, self.cpu_ratio, self.mem_ratio)
            return
        h = self.hosts[chosen]
        before = self.score(h)
        charge(h, r)
        reason = f"most free capacity ({before:.0%})"
        if g is not None:
            reason += f", {g.policy} {g.name}"
            if g.policy in ("affinity", "soft-affinity"):
                self.affinity_host[g.name] = chosen
        self.plan.steps.append(Placement(r.name, h.name, reason, self.score(h)))
        heapq.heappush(self.heap, (-self.score(h), chosen))

    def _follow_group(self, r: Request, g: Group) -> bool:
        """`r` placed on its affinity group's host, or refused there (hard affinity): True; False
        when a soft-affinity request may go elsewhere instead."""
        i = self.affinity_host[g.name]
        h = self.hosts[i]
        why = self.why_not(h, r)
        if why is None:
            charge(h, r)
            self.plan.steps.append(Placement(r.name, h.name, f"affinity {g.name}: with the group on {h.name}",
                                             self.score(h)))
            heapq.heappush(self.heap, (-self.score(h), i))  # stale entries are skipped
            return True
        if g.policy == "affinity":
            self.plan.unplaced[r.name] = [f"affinity group {g.name} is on {h.name}, which has no room: {why}"]
            return True
        return False

    def _pick(self, r: Request, g: Group | None) -> int | None:
        """The best-scored host `r` fits on, popped from the heap; the hosts passed over go back."""
        chosen: int | None = None
        skipped: list[tuple[float, int]] = []
        soft_fallback: tuple[float, int] | None = None
        avoid = g.name if g is not None and g.policy == "soft-anti-affinity" else None
        while self.heap:
            neg, i = heapq.heappop(self.heap)
            h = self.hosts[i]
            if neg != -self.score(h):  # stale entry: the host changed since
                continue
            if self.why_not(h, r) is not None:
                skipped.append((neg, i))  # full for this request, or its group rules it out
                continue
            if avoid is not None and h.groups.get(avoid, 0) > 0:
                # a member is here already: remember the best such host, look on a little further
                if soft_fallback is None:
                    soft_fallback = (neg, i)
                else:
                    skipped.append((neg, i))
                if len(skipped) < 64:
                    continue
                break
            chosen = i
            break
        return self._put_back(chosen, soft_fallback, skipped)

    def _put_back(self, chosen: int | None, soft_fallback: tuple[float, int] | None,
                  skipped: list[tuple[float, int]]) -> int | None:
        """The host `_pick` settles on (the soft-anti-affinity fallback when nothing better fit);
        every other host it popped goes back on the heap."""
        if chosen is None and soft_fallback is not None:
            chosen = soft_fallback[1]
        elif soft_fallback is not None:
            skipped.append(soft_fallback)
        for item in skipped:
            heapq.heappush(self.heap, item)
        return chosen


class _MaxTree:
    """Segment tree over hosts' free memory: first index >= start with free >= need, O(log n)."""

    def __init__(self, values: list[float]) -> None:
        self.n = 1
        while self.n < len(values):
            self.n *= 2
        self.t = [float("-inf")] * (2 * self.n)
        self.t[self.n:self.n + len(values)] = values
        for i in range(self.n - 1, 0, -1):
            self.t[i] = max(self.t[2 * i], self.t[2 * i + 1])

    def update(self, i: int, v: float) -> None:
        i += self.n
        self.t[i] = v
        while i > 1:
            i //= 2
            self.t[i] = max(self.t[2 * i], self.t[2 * i + 1])

    def first(self, start: int, need: float) -> int | None:
        return self._first(1, 0, self.n, start, need)

    def _first(self, node: int, lo: int, hi: int, start: int, need: float) -> int | None:
        if hi <= start or self.t[node] < need:
            return None
        if hi - lo == 1:
            return lo
        mid = (lo + hi) // 2
        left = self._first(2 * node, lo, mid, start, need)
        return left if left is not None else self._first(2 * node + 1, mid, hi, start, need)


def place_ffd(hosts: list[Host], requests: list[Request], groups: list[Group] | None = None,
              cpu_ratio: float = 4.0, mem_ratio: float = 1.0) -> Plan:
    """First-fit decreasing: the baseline."""
    gmap = {g.name: g for g in groups or []}
    plan = Plan()
    tree = _MaxTree([_free(h, cpu_ratio, mem_ratio)[1] if h.state == "ready" else float("-inf") for h in hosts])
    for r in _order(requests):
        start = 0
        while True:
            i = tree.first(start, r.memory_mib)
            if i is None:
                plan.unplaced[r.name] = ["no host has room (first fit)"]
                break
            h = hosts[i]
            if _why_not(h, r, gmap, cpu_ratio, mem_ratio) is None:
                charge(h, r)
                tree.update(i, _free(h, cpu_ratio, mem_ratio)[1])
                plan.steps.append(Placement(r.name, h.name, "first fit", 0.0))
                break
            start = i + 1
    return plan


def check(hosts: list[Host], requests: list[Request], groups: list[Group], plan: Plan,
          cpu_ratio: float = 4.0, mem_ratio: float = 1.0) -> int:
    """Violations of capacity or hard group rules in `plan`, counted from scratch."""
    by_name = {r.name: r for r in requests}
    gmap = {g.name: g for g in groups}
    cap = {h.name: (h.vcpus * cpu_ratio, h.memory_mib * mem_ratio, h.state) for h in hosts}
    cpu: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    members: Counter[tuple[str, str]] = Counter()
    group_hosts: dict[str, set[str]] = {}
    for s in plan.steps:
        r = by_name[s.request]
        cpu[s.host] += r.vcpus
        mem[s.host] += r.memory_mib
        if r.group:
            members[(r.group, s.host)] += 1
            group_hosts.setdefault(r.group, set()).add(s.host)
    violations = sum(1 for h, (c, m, st) in cap.items() if cpu[h] > c or mem[h] > m
                     or (st != "ready" and (cpu[h] or mem[h])))
    for (gname, _host), n in members.items():
        limit = gmap[gname].limit
        if limit is not None and n > limit:
            violations += 1
    violations += sum(1 for gname, hs in group_hosts.items() if gmap[gname].policy == "affinity" and len(hs) > 1)
    return violations
