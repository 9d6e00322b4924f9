"""The exact planner for small clusters: OR-tools CP-SAT picks the placement with the lowest spread,
then the fewest moves reaching it, within a time limit.

The model keeps every hard rule as a constraint: a moved VM goes to a ready host, allocations fit
every ready host, anti-affinity limits hold on every ready host, and VMs that may not move (in
cooldown, members of hard affinity groups) stay where they are; a movable VM on a host that is not
ready must leave it. When that cannot be met (a drain that cannot complete, a host over capacity
with VMs that may not move) or CP-SAT finds nothing in time, `solve` returns None and the caller
keeps the greedy plan.

The spread (see `score`) over n ready hosts, in integer units of 1/Q of each host's capacity
(u_h = normalised use x Q, rounded per VM and host):

    n^2 * spread^2 = n * sum_h (uc_h^2 + um_h^2) - (sum_h uc_h)^2 - (sum_h um_h)^2

When every ready host has the same shape the two sums of units are the same for every placement,
so only the squares are minimised; otherwise the squared sums are modelled too. The caller's plan
(the greedy one) is the hint, so CP-SAT starts from it and returns at least as good a placement.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from softudc.placement.cluster import Cluster
from softudc.placement.localsearch import search

Q = 1024  # units per host capacity; a multiple of 64, so use in 1/64 host steps is exact


@dataclass(frozen=True)
class Exact:
    """When and how long the exact planner runs (balance() uses it for clusters within the size limits)."""
    seconds: float = 5.0  # wall-clock limit for the whole (the search stops early when it stalls)
    max_hosts: int = 20
    max_vms: int = 80
    workers: int = 2
    slack: float = 0.08  # spread^2 the moves solve may give up for fewer moves (relative; ~2 % of the spread)
    search_share: float = 0.5  # at most this share of the time for the local search; the rest CP-SAT

    def fits(self, c: Cluster) -> bool:
        return self.seconds > 0 and len(c.hosts) <= self.max_hosts and len(c.vms) <= self.max_vms


class _Model:
    def __init__(self, c: Cluster, movable: Sequence[bool], max_moves: int | None) -> None:
        self.c, self.m = c, cp_model.CpModel()
        idx = {h.name: i for i, h in enumerate(c.hosts)}
        self.home = [idx[v.host] for v in c.vms]
        self.ready = [i for i, h in enumerate(c.hosts) if h.state == "ready"]
        self.x: dict[tuple[int, int], cp_model.IntVar] = {}
        self.feasible = bool(self.ready)
        for j, v in enumerate(c.vms):
            if not movable[j]:
                continue
            options = [h for h in self.ready if h == self.home[j]
                       or (v.vcpus <= c.hosts[h].vcpus and v.memory_mib <= c.hosts[h].memory_mib)]
            if not options:
                self.feasible = False
                return
            for h in options:
                self.x[(j, h)] = self.m.new_bool_var(f"{v.name}@{c.hosts[h].name}")
            self.m.add_exactly_one(self.x[(j, h)] for h in options)
        self.on = {h: [j for (j, hh) in self.x if hh == h] for h in self.ready}
        self.fixed = [j for j in range(len(c.vms)) if not movable[j]]
        self._capacity()
        self._groups()
        self.moves = sum(1 - self.x[(j, self.home[j])] if (j, self.home[j]) in self.x else 1
                         for j in range(len(c.vms)) if movable[j])
        if max_moves is not None:
            self.m.add(self.moves <= max_moves)

    def _capacity(self) -> None:
        for h in self.ready:
            host = self.c.hosts[h]
            fixed = [self.c.vms[j] for j in self.fixed if self.home[j] == h]
            self.m.add(sum(self.c.vms[j].vcpus * self.x[(j, h)] for j in self.on[h])
                       <= host.vcpus - sum(v.vcpus for v in fixed))
            self.m.add(sum(self.c.vms[j].memory_mib * self.x[(j, h)] for j in self.on[h])
                       <= host.memory_mib - sum(v.memory_mib for v in fixed))

    def _groups(self) -> None:
        fixed = Counter((self.c.vms[j].group, self.home[j]) for j in self.fixed)
        for g in self.c.groups.values():
            if g.limit is None:
                continue
            for h in self.ready:
                members = [self.x[(j, h)] for j in self.on[h] if self.c.vms[j].group == g.name]
                if members:
                    self.m.add(sum(members) <= g.limit - fixed[(g.name, h)])
                elif fixed[(g.name, h)] > g.limit:
                    self.feasible = False

    def spread_objective(self) -> cp_model.LinearExprT:
        """n * sum of squared units - the squared sums (those only when host shapes differ)."""
        shapes = {(self.c.hosts[h].vcpus, self.c.hosts[h].memory_mib) for h in self.ready}
        squares: list[cp_model.IntVar] = []
        sums: list[list[cp_model.LinearExprT]] = [[], []]
        for h in self.ready:
            for k in (0, 1):
                load = self._units(h, k)
                top = max(1, self._top(h, k))
                var = self.m.new_int_var(0, top, f"u{k}@{h}")
                self.m.add(var == load)
                sq = self.m.new_int_var(0, top * top, f"u{k}sq@{h}")
                self.m.add_multiplication_equality(sq, [var, var])
                squares.append(sq)
                sums[k].append(var)
        n = len(self.ready)
        if len(shapes) <= 1:
            return sum(squares)
        out = cp_model.LinearExpr.weighted_sum(squares, [n] * len(squares))
        for k in (0, 1):
            top = sum(max(1, self._top(h, k)) for h in self.ready)
            total = self.m.new_int_var(0, top, f"sum{k}")
            self.m.add(total == sum(sums[k]))
            sq = self.m.new_int_var(0, top * top, f"sum{k}sq")
            self.m.add_multiplication_equality(sq, [total, total])
            out = out - sq
        return out

    def unit(self, j: int, h: int, k: int) -> int:
        v, host = self.c.vms[j], self.c.hosts[h]
        return round((v.cpu / host.vcpus if k == 0 else v.mem / host.memory_mib) * Q)

    def _units(self, h: int, k: int) -> cp_model.LinearExprT:
        fixed = sum(self.unit(j, h, k) for j in self.fixed if self.home[j] == h)
        return fixed + sum(self.unit(j, h, k) * self.x[(j, h)] for j in self.on[h])

    def _top(self, h: int, k: int) -> int:
        return sum(self.unit(j, h, k) for j in self.fixed if self.home[j] == h) + sum(
            self.unit(j, h, k) for j in self.on[h])

    def bound(self, where: Sequence[int], slack: float) -> int:
        """The highest `spread_objective` whose spread^2 is within `slack` (relative) of that of `where`
        (a host index per VM)."""
        n = len(self.ready)
        units = [[sum(self.unit(j, h, k) for j in range(len(where)) if where[j] == h) for h in self.ready]
                 for k in (0, 1)]
        shapes = {(self.c.hosts[h].vcpus, self.c.hosts[h].memory_mib) for h in self.ready}
        squares = sum(u * u for k in (0, 1) for u in units[k])
        var = n * squares - sum(units[0]) ** 2 - sum(units[1]) ** 2  # n^2 spread^2 in units
        if len(shapes) > 1:
            return math.floor(var * (1 + slack))
        return squares + math.floor(var * slack / n)  # the squared sums are the same for every placement

    def hint(self, where: Sequence[int]) -> None:
        self.m.clear_hints()  # type: ignore[no-untyped-call]
        for (j, h), var in self.x.items():
            self.m.add_hint(var, where[j] == h)

    def placement(self, solver: cp_model.CpSolver) -> list[int]:
        where = list(self.home)
        for (j, h), var in self.x.items():
            if solver.value(var):
                where[j] = h
        return where


def solve(c: Cluster, movable: Sequence[bool], hint: Sequence[int], max_moves: int | None = None,
          exact: Exact | None = None) -> dict[int, int] | None:
    """The moves (VM index -> host index, indexes into c.vms / c.hosts) to the best placement found
    within the time limit: local search (`localsearch.search`) for the spread, then CP-SAT for the
    fewest moves at a spread no higher (within `exact.slack`); None when there is no ready host.
    Where CP-SAT finds nothing (no placement keeps every hard rule, or none in time) the local
    search's placement stands, with the VMs the hint leaves on hosts not ready still there.

    `hint`: a host index per VM (a placement keeping every hard rule, e.g. the greedy plan's result)."""
    exact = exact or Exact()
    if not any(h.state == "ready" for h in c.hosts):
        return None
    t0 = time.perf_counter()
    home = [next(i for i, h in enumerate(c.hosts) if h.name == v.host) for v in c.vms]
    where = search(c, movable, hint, exact.seconds * exact.search_share, home=home)
    model = _Model(c, movable, max_moves)
    if model.feasible:
        objective = model.spread_objective()
        model.m.add(objective <= model.bound(where, exact.slack))
        model.hint(where)
        model.m.minimize(model.moves)
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = exact.workers
        solver.parameters.max_time_in_seconds = max(0.1, exact.seconds - (time.perf_counter() - t0))
        if solver.solve(model.m) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            found = model.placement(solver)
            if sum(a != b for a, b in zip(found, home, strict=True)) < sum(a != b for a, b in zip(where, home,
                                                                                             strict=True)):
                where = found
    return {j: h for j, h in enumerate(where) if h != home[j]}
