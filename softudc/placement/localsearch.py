"""Local search over whole placements for small clusters: single moves and exchanges (two VMs trading
hosts), steepest descent, then random kicks and descent again, keeping the best placement found.

It works on ready hosts and the VMs it may move (the rest is fixed load) and keeps every hard rule
in each placement it visits: allocations fit, anti-affinity limits hold, nothing goes to a host
that is not ready. The value minimised is n^2 x spread^2 over the n ready hosts (see `score`),

    f = n * sum_h (xc_h^2 + xm_h^2) - (sum_h xc_h)^2 - (sum_h xm_h)^2

with xc_h, xm_h the normalised CPU and memory use of host h; every move and exchange is evaluated
at once as a numpy matrix from those sums. How the placement is reached (in which order, as how
many plan items) is the balancer's business (`balance._sequence`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model

from softudc.placement.cluster import Cluster

F = npt.NDArray[np.float64]
IA = npt.NDArray[np.int64]
EPS = 1e-12
LAM = 1e-4  # the cost of a move, relative to f where the search starts
STALL = 300  # kicks without a better placement before the search stops (the bench's 20x80 improve within ~120)


class Search:
    def __init__(self, c: Cluster, movable: Sequence[bool], where: Sequence[int], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.cap_c = np.array([h.vcpus for h in c.hosts], dtype=np.float64)
        self.cap_m = np.array([h.memory_mib for h in c.hosts], dtype=np.float64)
        self.ready = np.array([h.state == "ready" for h in c.hosts])
        self.n = max(1, int(self.ready.sum()))
        self.uc = np.array([v.cpu for v in c.vms], dtype=np.float64)[:, None] / self.cap_c[None, :]
        self.um = np.array([v.mem for v in c.vms], dtype=np.float64)[:, None] / self.cap_m[None, :]
        self.ac = np.array([v.vcpus for v in c.vms], dtype=np.float64)
        self.am = np.array([v.memory_mib for v in c.vms], dtype=np.float64)
        names = sorted({v.group for v in c.vms if v.group is not None and c.groups[v.group].limit is not None})
        gi = {g: i for i, g in enumerate(names)}
        self.g = np.array([gi.get(v.group or "", -1) for v in c.vms], dtype=np.int64)
        self.lim = np.array([c.groups[g].limit or 0 for g in names] + [10**9], dtype=np.float64)  # -1: no limit
        self.host = np.array(where, dtype=np.int64)
        self.movable = np.array(movable, dtype=bool) & self.ready[self.host]
        self.home: IA | None = None
        self.lam = 0.0
        self._sums()

    def _sums(self) -> None:
        h, idx = len(self.cap_c), np.arange(len(self.host))
        self.xc, self.xm = np.zeros(h), np.zeros(h)
        np.add.at(self.xc, self.host, self.uc[idx, self.host])
        np.add.at(self.xm, self.host, self.um[idx, self.host])
        self.alc, self.alm = np.zeros(h), np.zeros(h)
        np.add.at(self.alc, self.host, self.ac)
        np.add.at(self.alm, self.host, self.am)
        self.cnt = np.zeros((len(self.lim), h))
        np.add.at(self.cnt, (self.g, self.host), 1.0)

    def f(self) -> float:
        r = self.ready
        xc, xm = self.xc[r], self.xm[r]
        return float(self.n * ((xc ** 2).sum() + (xm ** 2).sum()) - xc.sum() ** 2 - xm.sum() ** 2)

    def value(self) -> float:
        """f, plus `lam` per VM away from `home` when set (so that of two equal spreads the one with
        fewer moves wins, and a move must lower f by more than lam to be worth it)."""
        return self.f() + (self.lam * float((self.host != self.home).sum()) if self.home is not None else 0.0)

    def _away_delta(self) -> tuple[F, F]:
        """The change of the VMs away from home for every move and every exchange."""
        assert self.home is not None
        home = self.home
        away = (self.host != home).astype(np.float64)
        dm_mv = (np.arange(len(self.cap_c))[None, :] != home[:, None]).astype(np.float64) - away[:, None]
        at_k = (self.host[None, :] != home[:, None]).astype(np.float64)  # [j, k]: j away when on k's host
        return dm_mv, at_k - away[:, None] + at_k.T - away[None, :]

    def _f(self, d2: F, d1c: F, d1m: F) -> F:
        r = self.ready
        s1c, s1m = self.xc[r].sum(), self.xm[r].sum()
        return np.asarray(self.n * d2 - (2 * s1c * d1c + d1c ** 2) - (2 * s1m * d1m + d1m ** 2), dtype=np.float64)

    def moves(self) -> F:
        """The change of f for every (vm, host) move; inf where a hard rule or the rules of the search forbid it."""
        j = np.arange(len(self.host))
        a = self.host
        oc, om = self.uc[j, a], self.um[j, a]
        d2 = ((self.xc[a] - oc) ** 2 - self.xc[a] ** 2 + (self.xm[a] - om) ** 2 - self.xm[a] ** 2)[:, None]
        d2 = d2 + (self.xc[None, :] + self.uc) ** 2 - self.xc[None, :] ** 2
        d2 = d2 + (self.xm[None, :] + self.um) ** 2 - self.xm[None, :] ** 2
        delta = self._f(d2, self.uc - oc[:, None], self.um - om[:, None])
        ok = (self.ready[None, :] & self.movable[:, None] & (a[:, None] != np.arange(len(self.cap_c))[None, :])
              & (self.alc[None, :] + self.ac[:, None] <= self.cap_c[None, :])
              & (self.alm[None, :] + self.am[:, None] <= self.cap_m[None, :])
              & (self.cnt[self.g] + 1 <= self.lim[self.g][:, None]))
        if self.home is not None:
            delta = delta + self.lam * self._away_delta()[0]
        return np.asarray(np.where(ok, delta, np.inf), dtype=np.float64)

    def swaps(self) -> F:
        """The change of f for every exchange (vm j to the host of vm k, k to the host of j); inf where forbidden."""
        j = np.arange(len(self.host))
        a = self.host
        ca, ma = self.uc[j, a], self.um[j, a]  # each VM's use where it is
        # j leaves a and k arrives at a (k's use measured on a); k leaves b and j arrives at b
        in_c, in_m = self.uc[:, a].T, self.um[:, a].T  # [j, k]: k's use on j's host
        new_ac = self.xc[a][:, None] - ca[:, None] + in_c
        new_am = self.xm[a][:, None] - ma[:, None] + in_m
        d2 = new_ac ** 2 - self.xc[a][:, None] ** 2 + new_am ** 2 - self.xm[a][:, None] ** 2
        d2 = d2 + d2.T
        d1c = (in_c - ca[:, None]) + (in_c - ca[:, None]).T
        d1m = (in_m - ma[:, None]) + (in_m - ma[:, None]).T
        delta = self._f(d2, d1c, d1m)
        room = ((self.alc[a][:, None] - self.ac[:, None] + self.ac[None, :] <= self.cap_c[a][:, None])
                & (self.alm[a][:, None] - self.am[:, None] + self.am[None, :] <= self.cap_m[a][:, None]))
        same = self.g[:, None] == self.g[None, :]
        # k arriving on j's host a: members of k's group there, less j when j is in the same group
        fits = self.cnt[self.g][:, a].T + 1 - same <= self.lim[self.g][None, :]
        ok = room & room.T & fits & fits.T & (a[:, None] != a[None, :]) & self.movable[:, None] & self.movable[None, :]
        ok &= self.ready[a][:, None] & self.ready[a][None, :]
        if self.home is not None:
            delta = delta + self.lam * self._away_delta()[1]
        return np.asarray(np.where(ok, delta, np.inf), dtype=np.float64)

    def relocate(self, j: int, h: int) -> None:
        a = int(self.host[j])
        self.host[j] = h
        for k, sign in ((a, -1.0), (h, 1.0)):
            self.xc[k] += sign * self.uc[j, k]
            self.xm[k] += sign * self.um[j, k]
            self.alc[k] += sign * self.ac[j]
            self.alm[k] += sign * self.am[j]
            self.cnt[self.g[j], k] += sign

    def apply(self, kind: str, j: int, x: int) -> None:
        """kind "move": VM j to host x; "swap": VMs j and x trade hosts."""
        if kind == "move":
            self.relocate(j, x)
            return
        a, b = int(self.host[j]), int(self.host[x])
        self.relocate(j, b)
        self.relocate(x, a)

    def descend(self) -> None:
        """Steepest descent: the best move or exchange until none lowers f."""
        while self.host.size and self.movable.any():
            mv, sw = self.moves(), self.swaps()
            i_mv, i_sw = int(np.argmin(mv)), int(np.argmin(sw))
            best_mv, best_sw = mv.flat[i_mv], sw.flat[i_sw]
            if min(best_mv, best_sw) >= -EPS * max(1.0, abs(self.value())):
                return
            if best_mv <= best_sw:
                self.apply("move", *divmod(i_mv, mv.shape[1]))
            else:
                self.apply("swap", *divmod(i_sw, sw.shape[1]))

    def fewer_moves(self, home: IA, slack: float) -> None:
        """Moves and exchanges that bring VMs back home (fewer moves in the plan) while f stays within
        `slack` (relative) of its value now; the fewest moves first, then the lowest f."""
        self.home, self.lam = home, 0.0
        limit = self.f() * (1 + slack) + EPS * max(1.0, abs(self.f()))
        while True:
            f, best = self.f(), None
            for kind, delta, dm in (("move", self.moves(), self._away_delta()[0]),
                                    ("swap", self.swaps(), self._away_delta()[1])):
                ok = np.isfinite(delta) & (f + delta <= limit) & (dm < 0)
                if ok.any():
                    key = np.where(ok, dm * 1e6 + delta / max(abs(limit), EPS), np.inf)
                    i = int(np.argmin(key))
                    if best is None or key.flat[i] < best[0]:
                        best = (float(key.flat[i]), kind, *divmod(i, key.shape[1]))
            if best is None:
                return
            self.apply(best[1], best[2], best[3])

    def kick(self, size: int) -> None:
        """`size` random allowed moves or exchanges (a step away from a local minimum)."""
        for _ in range(size):
            sw = self.swaps()
            pairs = np.argwhere(np.isfinite(sw))
            if not len(pairs):
                return
            j, k = (int(x) for x in pairs[self.rng.integers(len(pairs))])
            self.apply("swap", j, k)


def relabel(c: Cluster, movable: Sequence[bool], home: Sequence[int], where: Sequence[int]) -> list[int]:
    """`where` with the contents of same-shape ready hosts swapped wholesale so that as many VMs as
    possible stay home: the spread, room and anti-affinity are the same for every such relabelling.
    A host holding a VM that may not move, or breaking a rule (from before the plan), keeps its contents."""
    ready = [h for h in range(len(c.hosts)) if c.hosts[h].state == "ready"]
    alloc: Counter[int] = Counter()
    mem: Counter[int] = Counter()
    members: Counter[tuple[str, int]] = Counter()
    for v, h in zip(c.vms, where, strict=True):
        alloc[h] += v.vcpus
        mem[h] += v.memory_mib
        members[(v.group or "", h)] += 1
    over = {h for (g, h), n in members.items() if g and (c.groups[g].limit or n) < n}
    pinned = {where[j] for j in range(len(where)) if not movable[j]} | over | {
        h for h in ready if alloc[h] > c.hosts[h].vcpus or mem[h] > c.hosts[h].memory_mib}  # moving those breaks
    m = cp_model.CpModel()
    pick: dict[tuple[int, int], cp_model.IntVar] = {}
    for a in ready:
        for b in ready:
            same = (c.hosts[a].vcpus, c.hosts[a].memory_mib) == (c.hosts[b].vcpus, c.hosts[b].memory_mib)
            if same and (a not in pinned or a == b):
                pick[(a, b)] = m.new_bool_var(f"{a}->{b}")
    for a in ready:
        m.add_exactly_one(v for (x, _), v in pick.items() if x == a)
        m.add_exactly_one(v for (_, y), v in pick.items() if y == a)
    stays = Counter((where[j], home[j]) for j in range(len(where)))
    m.maximize(sum(stays[k] * v for k, v in pick.items()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = 1.0
    if solver.solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return list(where)
    to = {a: b for (a, b), v in pick.items() if solver.value(v)}
    return [to.get(h, h) for h in where]


def search(c: Cluster, movable: Sequence[bool], where: Sequence[int], seconds: float, seed: int = 0,
           home: Sequence[int] | None = None, slack: float = 0.0) -> list[int]:
    """The best placement (a host index per VM) found from `where` within `seconds`: a legal start stays legal.

    With `home` (each VM's host before the plan) the result is then brought as close to it as
    `relabel` and `Search.fewer_moves` (f within `slack`) can: fewer moves for the same spread."""
    best = _search(c, movable, where, seconds, seed, home)
    if home is None:
        return best
    s = Search(c, movable, relabel(c, movable, home, best), seed)
    s.fewer_moves(np.array(home, dtype=np.int64), slack)
    return [int(h) for h in s.host]


def _search(c: Cluster, movable: Sequence[bool], where: Sequence[int], seconds: float, seed: int,
            home: Sequence[int] | None) -> list[int]:
    """Iterated local search: kicks and descents until `seconds` pass or STALL kicks in a row find nothing better."""
    s = Search(c, movable, where, seed)
    if home is not None:  # each VM away from home costs LAM of f where the search starts
        s.home, s.lam = np.array(home, dtype=np.int64), LAM * s.f()
    s.descend()
    best, best_f = s.host.copy(), s.value()
    deadline, stall = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline and stall < STALL and s.movable.any():
        s.kick(2 + int(s.rng.integers(3)))
        s.descend()
        f, stall = s.value(), stall + 1
        if f < best_f - EPS * max(1.0, abs(best_f)):
            best, best_f, stall = s.host.copy(), f, 0
        elif s.rng.random() < 0.5:  # go back to the best more often than wander on
            s.host = best.copy()
            s._sums()
    return [int(h) for h in best]
