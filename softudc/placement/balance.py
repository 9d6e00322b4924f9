"""The balancer: a plan of live migrations that lowers the cluster score (see `score`).

Greedy, one move at a time. The source is the host most in need: first hosts that are not ready
and still hold VMs, then hosts breaking a hard rule, then the ready host with the highest
normalised CPU + memory use. For its movable VMs and the K least-loaded ready hosts with room
for its smallest VM, the score after each (VM, destination) pair comes from running sums (sum
and sum of squares of normalised use) in O(1), evaluated with numpy as one matrix; the best pair
is taken if it lowers the score by at least `min_gain`, else the host is set aside. A round ends
when every host is set aside or `patience` ready hosts in a row yield nothing; the next round
looks at every host again (earlier moves changed the destinations), up to `rounds` rounds or a
round without a move.

Hard rules are never broken by a move: the destination is ready, has room for the VM's
allocation, and stays within the VM's anti-affinity limit. VMs of hard affinity groups are not
moved one by one. A VM moved less than `cooldown_s` ago is not moved; no VM moves twice in a plan.

Then exchanges (`exchange`, every cluster size): two VMs trade hosts where no single move helps
(the cool hosts lack room for the hot host's VMs, or a whole VM overshoots), each a plan item of
two moves that lowers the score by at least `min_gain`, the half that fits first in the earlier step.

Small clusters (`exact.Exact`: <= 20 hosts, <= 80 VMs) are planned a second way too: local search
with exchanges (`localsearch`), CP-SAT for the fewest moves (`exact`), the moves ordered so each
keeps the hard rules and cut into plan items that each gain >= min_gain (`_sequence`; an item of
several moves, e.g. an exchange, shares `Move.item`); the better of the two plans is returned.

Steps: moves keep their order, and each goes into the earliest step after every earlier move
that used one of its hosts in the other role (so within a step a host is only a source or only
a destination, and room freed by a move is only used in a later step), within the limits per
source, per destination and per step.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from softudc.placement.cluster import Cluster
from softudc.placement.exact import Exact, solve
from softudc.placement.exchange import exchanges
from softudc.placement.score import PENALTY, Breakdown, over_units, score

F = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Limits:
    max_per_source: int = 2
    max_per_destination: int = 2
    max_per_step: int = 8
    max_moves: int | None = None


@dataclass(frozen=True)
class Move:
    vm: str
    source: str
    destination: str
    step: int
    reason: str
    score_before: float
    score_after: float
    item: int | None = None  # moves sharing an item (an exchange) lower the score only together: run all or none


@dataclass
class Plan:
    moves: list[Move]
    score_before: float
    score_after: float
    before: Breakdown
    after: Breakdown
    fingerprint: str
    stuck: dict[str, str] = field(default_factory=dict)  # vm on a host not ready -> why it cannot move

    @property
    def steps(self) -> list[list[Move]]:
        out: list[list[Move]] = [[] for _ in range(max((m.step for m in self.moves), default=-1) + 1)]
        for m in self.moves:
            out[m.step].append(m)
        return out

    def to_dict(self) -> dict[str, object]:
        return {"fingerprint": self.fingerprint, "score_before": self.score_before, "score_after": self.score_after,
                "moves": [m.__dict__ for m in self.moves], "stuck": self.stuck}


class _State:
    """Per-host running loads and the sums the spread is computed from."""

    def __init__(self, c: Cluster) -> None:
        self.names = [h.name for h in c.hosts]
        idx = {n: i for i, n in enumerate(self.names)}
        self.cap_c = np.array([h.vcpus for h in c.hosts], dtype=np.float64)
        self.cap_m = np.array([h.memory_mib for h in c.hosts], dtype=np.float64)
        self.ready = np.array([h.state == "ready" for h in c.hosts], dtype=bool)
        self.state = [h.state for h in c.hosts]
        self.vm_host = np.array([idx[v.host] for v in c.vms], dtype=np.int64)
        self.vm_c = np.array([v.cpu for v in c.vms], dtype=np.float64)
        self.vm_m = np.array([v.mem for v in c.vms], dtype=np.float64)
        self.vm_ac = np.array([v.vcpus for v in c.vms], dtype=np.float64)
        self.vm_am = np.array([v.memory_mib for v in c.vms], dtype=np.float64)
        n = len(self.names)
        self.load_c, self.load_m = np.zeros(n), np.zeros(n)
        self.alloc_c, self.alloc_m = np.zeros(n), np.zeros(n)
        np.add.at(self.load_c, self.vm_host, self.vm_c)
        np.add.at(self.load_m, self.vm_host, self.vm_m)
        np.add.at(self.alloc_c, self.vm_host, self.vm_ac)
        np.add.at(self.alloc_m, self.vm_host, self.vm_am)
        self.on: list[set[int]] = [set() for _ in range(n)]
        for j, h in enumerate(self.vm_host.tolist()):
            self.on[h].add(j)
        self.members: dict[tuple[str, int], int] = defaultdict(int)
        for v, h in zip(c.vms, self.vm_host.tolist(), strict=True):
            if v.group is not None:
                self.members[(v.group, h)] += 1
        r = self.ready
        self.n_ready = max(1, int(r.sum()))
        xc, xm = self.load_c / self.cap_c, self.load_m / self.cap_m
        self.s1c, self.s2c = float(xc[r].sum()), float((xc[r] ** 2).sum())
        self.s1m, self.s2m = float(xm[r].sum()), float((xm[r] ** 2).sum())
        # kept up to date host by host in `move`: what `need` and destination choice read
        self.ratio = xc + xm
        self.prio = np.zeros(n)
        self.dest_key = np.zeros(n)
        for h in range(n):
            self._refresh(h)

    def _refresh(self, h: int) -> None:
        self.ratio[h] = self.load_c[h] / self.cap_c[h] + self.load_m[h] / self.cap_m[h]
        hard = not self.ready[h] or self.over(h)
        self.prio[h] = self.ratio[h] + (0.0 if self.ready[h] else 1e6) + (1e3 if hard else 0.0)
        self.dest_key[h] = self.ratio[h] if self.ready[h] else np.inf

    def over(self, h: int) -> bool:
        return bool(self.alloc_c[h] > self.cap_c[h] or self.alloc_m[h] > self.cap_m[h])

    def over_units(self, h: int, less_c: float = 0.0, less_m: float = 0.0) -> float:
        return over_units(float(self.alloc_c[h] - less_c), float(self.cap_c[h]), float(self.alloc_m[h] - less_m),
                          float(self.cap_m[h]))

    def spread(self, s1c: F | float, s2c: F | float, s1m: F | float, s2m: F | float) -> F:
        n = self.n_ready
        var = np.maximum(0.0, np.asarray(s2c) / n - (np.asarray(s1c) / n) ** 2)
        var = var + np.maximum(0.0, np.asarray(s2m) / n - (np.asarray(s1m) / n) ** 2)
        return np.asarray(np.sqrt(var), dtype=np.float64)

    def move(self, j: int, d: int) -> None:
        s = int(self.vm_host[j])
        for h, sign in ((s, -1.0), (d, 1.0)):
            if self.ready[h]:
                xc, xm = self.load_c[h] / self.cap_c[h], self.load_m[h] / self.cap_m[h]
                self.s1c -= xc
                self.s2c -= xc * xc
                self.s1m -= xm
                self.s2m -= xm * xm
            self.load_c[h] += sign * self.vm_c[j]
            self.load_m[h] += sign * self.vm_m[j]
            self.alloc_c[h] += sign * self.vm_ac[j]
            self.alloc_m[h] += sign * self.vm_am[j]
            if self.ready[h]:
                xc, xm = self.load_c[h] / self.cap_c[h], self.load_m[h] / self.cap_m[h]
                self.s1c += xc
                self.s2c += xc * xc
                self.s1m += xm
                self.s2m += xm * xm
        self._refresh(s)
        self._refresh(d)
        self.on[s].discard(j)
        self.on[d].add(j)
        self.vm_host[j] = d


class _Balancer:
    def __init__(self, c: Cluster, min_gain: float, cooldown_s: float, now: float, k: int) -> None:
        c.validate()
        self.c, self.st, self.min_gain, self.k = c, _State(c), min_gain, k
        self.group = [v.group for v in c.vms]
        self.limit = [c.groups[g].limit if g is not None else None for g in self.group]
        self.movable = np.array([not (v.moved_at is not None and now - v.moved_at < cooldown_s)
                                 and not (v.group is not None and c.groups[v.group].policy == "affinity")
                                 for v in c.vms])
        self.cool = self.movable.copy()  # movable before the plan (the cooldown and affinity rules)
        self.before = score(c)
        self.breaks = self.before.penalty / PENALTY  # penalty units, kept up to date move by move

    def total(self) -> float:
        st = self.st
        return float(st.spread(st.s1c, st.s2c, st.s1m, st.s2m)) + PENALTY * self.breaks

    def need(self) -> F:
        """How much each host needs VMs moved off (higher first); -inf for hosts with nothing to move."""
        return self.st.prio

    def after_one(self, j: int, d: int) -> float:
        """The score after moving VM j to host d (inf if that breaks a hard rule)."""
        if not self.st.ready[d] or int(self.st.vm_host[j]) == d:
            return math.inf
        return float(self._after(int(self.st.vm_host[j]), np.array([j], dtype=np.int64),
                                 np.array([d], dtype=np.int64))[0, 0])

    def excess(self, j: int, h: int) -> int:
        g, lim = self.group[j], self.limit[j]
        return 1 if g is not None and lim is not None and self.st.members[(g, h)] > lim else 0

    def best_from(self, s: int) -> tuple[int, int, float] | None:
        """The best (vm, destination, score after) off host s, or None."""
        st = self.st
        vms = np.array([j for j in st.on[s] if self.movable[j]], dtype=np.int64)
        if not vms.size:
            return None
        min_c, min_m = st.vm_ac[vms].min(), st.vm_am[vms].min()
        n = len(st.names)
        kk = min(4 * self.k, n)  # the least-loaded few, then those with room, then the k least loaded
        near = np.argpartition(st.dest_key, kk - 1)[:kk] if kk < n else np.arange(n)
        near = near[np.isfinite(st.dest_key[near]) & (near != s) & (st.alloc_c[near] + min_c <= st.cap_c[near])
                    & (st.alloc_m[near] + min_m <= st.cap_m[near])]
        dests = near[np.argsort(st.dest_key[near], kind="stable")[:self.k]]
        best = self._best(s, vms, dests)
        if best is None and (not st.ready[s] or st.over(s)):  # a hard break: look at every ready host
            every = np.flatnonzero(np.isfinite(st.dest_key) & (st.alloc_c + min_c <= st.cap_c)
                                   & (st.alloc_m + min_m <= st.cap_m))
            best = self._best(s, vms, every[every != s])
        return best

    def _best(self, s: int, vms: npt.NDArray[np.int64], dests: npt.NDArray[np.int64]) -> tuple[int, int, float] | None:
        if not dests.size:
            return None
        after = self._after(s, vms, dests)
        i, d = np.unravel_index(int(np.argmin(after)), after.shape)
        if not np.isfinite(after[i, d]):
            return None
        return int(vms[i]), int(dests[d]), float(after[i, d])

    def _after(self, s: int, vms: npt.NDArray[np.int64], dests: npt.NDArray[np.int64]) -> F:
        st = self.st
        vc, vm = st.vm_c[vms][:, None], st.vm_m[vms][:, None]
        rs = 1.0 if st.ready[s] else 0.0
        xs_c, xs_m = st.load_c[s] / st.cap_c[s], st.load_m[s] / st.cap_m[s]
        ns_c, ns_m = (st.load_c[s] - vc) / st.cap_c[s], (st.load_m[s] - vm) / st.cap_m[s]
        xd_c, xd_m = (st.load_c[dests] / st.cap_c[dests])[None, :], (st.load_m[dests] / st.cap_m[dests])[None, :]
        nd_c = (st.load_c[dests][None, :] + vc) / st.cap_c[dests]
        nd_m = (st.load_m[dests][None, :] + vm) / st.cap_m[dests]
        s1c = st.s1c + rs * (ns_c - xs_c) + nd_c - xd_c
        s2c = st.s2c + rs * (ns_c ** 2 - xs_c ** 2) + nd_c ** 2 - xd_c ** 2
        s1m = st.s1m + rs * (ns_m - xs_m) + nd_m - xd_m
        s2m = st.s2m + rs * (ns_m ** 2 - xs_m ** 2) + nd_m ** 2 - xd_m ** 2
        fixed = np.array([self.excess(int(j), s) for j in vms], dtype=np.float64)[:, None] + (1.0 - rs)
        if st.over(s):
            now_units = st.over_units(s)
            fixed = fixed + np.array([now_units - st.over_units(s, st.vm_ac[j], st.vm_am[j]) for j in vms])[:, None]
        after = st.spread(s1c, s2c, s1m, s2m) + PENALTY * (self.breaks - fixed)
        room = ((st.alloc_c[dests][None, :] + st.vm_ac[vms][:, None] <= st.cap_c[dests][None, :])
                & (st.alloc_m[dests][None, :] + st.vm_am[vms][:, None] <= st.cap_m[dests][None, :]))
        for i, j in enumerate(vms.tolist()):
            g, lim = self.group[j], self.limit[j]
            if g is not None and lim is not None:
                room[i] &= np.array([st.members.get((g, d), 0) + 1 <= lim for d in dests.tolist()])
        return np.asarray(np.where(room, after, np.inf), dtype=np.float64)

    def apply(self, j: int, d: int, after: float) -> tuple[str, float]:
        st = self.st
        s = int(st.vm_host[j])
        was = st.over_units(s)
        fixed = self.excess(j, s) + (0.0 if st.ready[s] else 1.0)
        g = self.group[j]
        st.move(j, d)
        self.movable[j] = False  # no VM moves twice in a plan
        if g is not None:
            st.members[(g, s)] -= 1
            st.members[(g, d)] += 1
        fixed += was - st.over_units(s)
        self.breaks -= fixed
        return self._reason(j, s, d), after

    def _reason(self, j: int, s: int, d: int) -> str:
        st = self.st
        why = "" if st.state[s] == "ready" else f" (host {st.names[s]} {st.state[s]})"
        return (f"host {st.names[s]} cpu {(st.load_c[s] + st.vm_c[j]) / st.cap_c[s]:.0%} mem "
                f"{(st.load_m[s] + st.vm_m[j]) / st.cap_m[s]:.0%} -> {st.names[d]} cpu "
                f"{(st.load_c[d] - st.vm_c[j]) / st.cap_c[d]:.0%} mem {(st.load_m[d] - st.vm_m[j]) / st.cap_m[d]:.0%}"
                f"{why}")


def _steps(pairs: list[tuple[int, int]], limits: Limits) -> list[int]:
    """The step of each (source, destination) move, in order (see the module text)."""
    last_src: dict[int, int] = {}  # host -> last step it was a source in
    last_dst: dict[int, int] = {}
    per: dict[tuple[int, str, int], int] = defaultdict(int)  # (step, role, host) -> moves
    per_step: dict[int, int] = defaultdict(int)
    first_open = 0  # every step before it is full (steps only fill up)
    out = []
    for s, d in pairs:
        while per_step[first_open] >= limits.max_per_step:
            first_open += 1
        step = max(last_dst.get(s, -1) + 1, last_src.get(d, -1) + 1, first_open)
        while (per[(step, "s", s)] >= limits.max_per_source or per[(step, "d", d)] >= limits.max_per_destination
               or per_step[step] >= limits.max_per_step):
            step += 1
        per[(step, "s", s)] += 1
        per[(step, "d", d)] += 1
        per_step[step] += 1
        last_src[s] = max(last_src.get(s, -1), step)
        last_dst[d] = max(last_dst.get(d, -1), step)
        out.append(step)
    return out


Entry = tuple[int, int, int, str, float, float, "int | None"]  # vm, source, dest, reason, before, after, item


def _greedy(b: _Balancer, min_gain: float, max_moves: int | None, patience: int, rounds: int) -> list[Entry]:
    current = b.total()
    aside = np.zeros(len(b.st.names), dtype=bool)
    chosen: list[Entry] = []
    misses, round_start = 0, 0
    while max_moves is None or len(chosen) < max_moves:
        need = np.where(aside, -np.inf, b.need())
        s = int(np.argmax(need)) if need.size else 0
        if misses >= patience or not need.size or not math.isfinite(need[s]):
            if len(chosen) == round_start or rounds <= 1:  # a round without a move: done
                break
            rounds, round_start, misses = rounds - 1, len(chosen), 0
            aside[:] = False
            continue
        best = b.best_from(s)
        if best is None or current - best[2] < min_gain:
            aside[s] = True
            misses += 1 if b.st.ready[s] and not b.st.over(s) else 0
            continue
        misses = 0
        j, d, after = best
        reason, after = b.apply(j, d, after)
        chosen.append((j, s, d, f"{reason}: score {current:.4f} -> {after:.4f}", current, after, None))
        current = after
    return chosen


def _sequence(b: _Balancer, targets: dict[int, int], min_gain: float, max_moves: int | None) -> list[Entry]:
    """The moves to `targets` (vm -> host) in an order that keeps every hard rule move by move, as plan
    items: each item is the shortest run of moves (best next move first) that lowers the score by at
    least min_gain; a tail that does not, or cannot go on without breaking a rule, is left out."""
    chosen: list[Entry] = []
    current, rest, items = b.total(), dict(targets), 0
    while rest and (max_moves is None or len(chosen) < max_moves):
        start, chain = current, list[tuple[int, int, int, str, float, float]]()
        while rest and (max_moves is None or len(chosen) + len(chain) < max_moves) and start - current < min_gain:
            after, j, d = min((b.after_one(j, d), j, d) for j, d in rest.items())
            if not math.isfinite(after):
                break
            s = int(b.st.vm_host[j])
            reason, _ = b.apply(j, d, after)
            del rest[j]
            chain.append((j, s, d, reason, current, after))
            current = after
        if not chain or start - current < min_gain:
            break
        item = None if len(chain) == 1 else items
        items += item is not None
        names = [b.c.vms[e[0]].name for e in chain]
        for k, (j, s, d, reason, sb, sa) in enumerate(chain):
            others = ", ".join(n for n in names if n != names[k])
            both = "" if item is None else (f" (exchange {k + 1}/{len(chain)} with {others}: together score "
                                            f"{start:.4f} -> {current:.4f})")
            chosen.append((j, s, d, f"{reason}: score {sb:.4f} -> {sa:.4f}{both}", sb, sa, item))
    return chosen


def _plan(cluster: Cluster, b: _Balancer, chosen: list[Entry], limits: Limits) -> Plan:
    steps = _steps([(s, d) for _, s, d, *_ in chosen], limits)
    names = b.st.names
    moves = [Move(cluster.vms[j].name, names[s], names[d], step, reason, sb, sa, item)
             for (j, s, d, reason, sb, sa, item), step in zip(chosen, steps, strict=True)]
    after_c = cluster.moved({m.vm: m.destination for m in moves})
    ready = {h.name for h in cluster.hosts if h.state == "ready"}
    stuck = {v.name: _why_stuck(b, i) for i, v in enumerate(after_c.vms) if v.host not in ready}
    return Plan(moves, b.before.total, score(after_c).total, b.before, score(after_c), cluster.fingerprint(), stuck)


def _exact_plan(cluster: Cluster, greedy: Plan, min_gain: float, cooldown_s: float, now: float, limits: Limits,
                exact: Exact, candidates: int) -> Plan | None:
    b = _Balancer(cluster, min_gain, cooldown_s, now, candidates)
    idx = {n: i for i, n in enumerate(b.st.names)}
    where = {m.vm: m.destination for m in greedy.moves}
    hint = [idx[where.get(v.name, v.host)] for v in cluster.vms]
    targets = solve(cluster, b.movable.tolist(), hint, limits.max_moves, exact)
    if targets is None:
        return None
    return _plan(cluster, b, _sequence(b, targets, min_gain, limits.max_moves), limits)


def balance(cluster: Cluster, *, min_gain: float | None = None, cooldown_s: float = 600.0, now: float = 0.0,
            limits: Limits | None = None, candidates: int = 16, patience: int = 32, rounds: int = 8,
            exact: Exact | None = None) -> Plan:
    """A plan of moves lowering `score(cluster)`; `now` (unix time) is compared with each VM's moved_at.

    min_gain defaults to 0.02 / ready hosts: one move changes the spread by about its share of one
    host over the host count, so a fixed threshold would stop a large cluster from balancing at all.
    Clusters within `exact`'s size limits (default: 20 hosts, 80 VMs, 2 s) are also planned by
    CP-SAT (`exact.solve`) from the greedy plan; the better plan is returned (fewer moves on a tie).
    """
    limits = limits or Limits()
    if min_gain is None:
        min_gain = 0.02 / max(1, sum(h.state == "ready" for h in cluster.hosts))
    b = _Balancer(cluster, min_gain, cooldown_s, now, candidates)
    chosen = _greedy(b, min_gain, limits.max_moves, patience, rounds)
    items = sum(b.st.ready) if limits.max_moves is None else (limits.max_moves - len(chosen)) // 2
    plan = _plan(cluster, b, chosen + exchanges(b, min_gain, 0, int(items)), limits)
    exact = exact or Exact()
    if not exact.fits(cluster) or plan.score_after < min_gain:  # a score >= 0 cannot fall by min_gain more
        return plan
    other = _exact_plan(cluster, plan, min_gain, cooldown_s, now, limits, exact, candidates)
    if other is None:
        return plan
    tie = other.score_after <= plan.score_after + 1e-12 and len(other.moves) < len(plan.moves)
    return other if other.score_after < plan.score_after - 1e-12 or tie else plan


def _why_stuck(b: _Balancer, j: int) -> str:
    g = b.c.vms[j].group
    if g is not None and b.c.groups[g].policy == "affinity":
        return "member of an affinity group (moved with its group, not alone)"
    if not b.cool[j]:
        return "in cooldown"
    return "no ready host with room that keeps its anti-affinity limit among the least-loaded candidates"
