"""Exchanges for clusters of any size (issue 12 item 3): after the greedy single moves, two VMs
trade hosts where no single move helps (the cool hosts have no room for the hot host's VMs, or
moving a whole VM overshoots). Each exchange is one plan item of two moves (run all or none).

The hot host is the ready host with the highest normalised CPU + memory use that is not set
aside; its partners are the `k` least-loaded ready hosts. For every (VM j on the hot host, VM i
on a partner) pair the spread after the trade comes from the balancer's running sums in O(1),
evaluated with numpy at once; the best pair is taken if it lowers the score by at least
min_gain and keeps every hard rule move by move: both hosts' allocations fit after the trade,
and one of the two moves fits first (j to the partner, or i to the hot host: that one runs first,
in an earlier step). VMs of a group with a limit (anti-affinity) or of an affinity group, in
cooldown, or already moved in the plan are not traded. A hot host without a good trade is set
aside; the search stops after `patience` hosts in a row without one, `max_items` exchanges, or
`budget_s` seconds.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from softudc.placement.cluster import Cluster

F = npt.NDArray[np.float64]
IA = npt.NDArray[np.int64]
Entry = tuple[int, int, int, str, float, float, "int | None"]  # vm, source, dest, reason, before, after, item


class Balancing(Protocol):
    """What an exchange reads and changes of the balancer (placement.balance._Balancer)."""

    c: Cluster
    st: Any  # balance._State: loads, allocations, capacities, running sums
    movable: npt.NDArray[np.bool_]
    limit: list[int | None]
    k: int

    def total(self) -> float: ...

    def apply(self, j: int, d: int, after: float) -> tuple[str, float]: ...


def _tradable(b: Balancing, h: int) -> IA:
    return np.array(sorted(j for j in b.st.on[h] if b.movable[j] and b.limit[j] is None), dtype=np.int64)


def _spread_after(b: Balancing, s: int, js: IA, is_: IA, dh: IA) -> F:
    """The spread after trading js[a] (on s) with is_[c] (on host dh[c]), a (len(js), len(is_)) matrix."""
    st = b.st
    dc = st.vm_c[js][:, None] - st.vm_c[is_][None, :]  # load leaving s, arriving on dh
    dm = st.vm_m[js][:, None] - st.vm_m[is_][None, :]
    xs_c, xs_m = st.load_c[s] / st.cap_c[s], st.load_m[s] / st.cap_m[s]
    ns_c, ns_m = (st.load_c[s] - dc) / st.cap_c[s], (st.load_m[s] - dm) / st.cap_m[s]
    cd_c, cd_m = st.cap_c[dh][None, :], st.cap_m[dh][None, :]
    xd_c, xd_m = st.load_c[dh][None, :] / cd_c, st.load_m[dh][None, :] / cd_m
    nd_c, nd_m = (st.load_c[dh][None, :] + dc) / cd_c, (st.load_m[dh][None, :] + dm) / cd_m
    s1c = st.s1c + ns_c - xs_c + nd_c - xd_c
    s2c = st.s2c + ns_c ** 2 - xs_c ** 2 + nd_c ** 2 - xd_c ** 2
    s1m = st.s1m + ns_m - xs_m + nd_m - xd_m
    s2m = st.s2m + ns_m ** 2 - xs_m ** 2 + nd_m ** 2 - xd_m ** 2
    return np.asarray(st.spread(s1c, s2c, s1m, s2m), dtype=np.float64)


def _fits(b: Balancing, s: int, js: IA, is_: IA, dh: IA) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(the trade keeps both hosts within capacity and one move fits first, j's move fits first)."""
    st = b.st
    ajc, ajm = st.vm_ac[js][:, None], st.vm_am[js][:, None]
    aic, aim = st.vm_ac[is_][None, :], st.vm_am[is_][None, :]
    dc, dm, cc, cm = st.alloc_c[dh][None, :], st.alloc_m[dh][None, :], st.cap_c[dh][None, :], st.cap_m[dh][None, :]
    end = ((st.alloc_c[s] - ajc + aic <= st.cap_c[s]) & (st.alloc_m[s] - ajm + aim <= st.cap_m[s])
           & (dc - aic + ajc <= cc) & (dm - aim + ajm <= cm))
    j_first = (dc + ajc <= cc) & (dm + ajm <= cm)
    i_first = (st.alloc_c[s] + aic <= st.cap_c[s]) & (st.alloc_m[s] + aim <= st.cap_m[s])
    return end & (j_first | i_first), j_first & end


def best_trade(b: Balancing, s: int) -> tuple[int, int, int, float, bool] | None:
    """The best (j on s, partner host d, i on d, spread after, j moves first) for hot host s."""
    st = b.st
    js = _tradable(b, s)
    if not js.size:
        return None
    keys = st.dest_key.copy()
    keys[s] = np.inf
    kk = min(b.k, len(keys))
    partners = np.argpartition(keys, kk - 1)[:kk] if kk < len(keys) else np.arange(len(keys))
    cols = [(_tradable(b, d), d) for d in sorted(partners.tolist()) if math.isfinite(keys[d]) and not st.over(d)]
    cols = [(i, d) for i, d in cols if i.size]
    if not cols:
        return None
    is_ = np.concatenate([i for i, _ in cols])
    dh = np.concatenate([np.full(i.size, d, dtype=np.int64) for i, d in cols])
    ok, j_first = _fits(b, s, js, is_, dh)
    after = np.where(ok, _spread_after(b, s, js, is_, dh), np.inf)
    a, c = np.unravel_index(int(np.argmin(after)), after.shape)
    if not math.isfinite(after[a, c]):
        return None
    return int(js[a]), int(dh[c]), int(is_[c]), float(after[a, c]), bool(j_first[a, c])


def exchanges(b: Balancing, min_gain: float, first_item: int, max_items: int, patience: int = 64,
              budget_s: float = 5.0) -> list[Entry]:
    """Exchanges lowering the score by at least min_gain each (see the module), as plan entries;
    within `budget_s` seconds (only a cluster of thousands of hosts comes near it)."""
    st = b.st
    out: list[Entry] = []
    aside = ~st.ready.copy()
    misses = 0
    until = time.monotonic() + budget_s
    while len(out) < 2 * max_items and misses < patience and time.monotonic() < until:
        prio = np.where(aside, -np.inf, st.ratio)
        s = int(np.argmax(prio)) if prio.size else 0
        if not prio.size or not math.isfinite(prio[s]):
            break
        current = b.total()
        penalty = current - float(st.spread(st.s1c, st.s2c, st.s1m, st.s2m))
        trade = None if st.over(s) else best_trade(b, s)
        if trade is None or current - (trade[3] + penalty) < min_gain:
            aside[s], misses = True, misses + 1
            continue
        misses = 0
        out.extend(_trade(b, s, trade, first_item + len(out) // 2, current))
    return out


def _trade(b: Balancing, s: int, trade: tuple[int, int, int, float, bool], item: int, current: float) -> list[Entry]:
    j, d, i, _, j_first = trade
    names = {j: b.c.vms[j].name, i: b.c.vms[i].name}
    done = []
    for vm, src, dst in ([(j, s, d), (i, d, s)] if j_first else [(i, d, s), (j, s, d)]):
        reason, _ = b.apply(vm, dst, math.nan)
        after = b.total()
        done.append((vm, src, dst, reason, current, after))
        current = after
    start, end = done[0][4], done[-1][5]
    return [(vm, src, dst, f"{reason}: score {sb:.4f} -> {sa:.4f} (exchange {k + 1}/2 with "
             f"{names[i if vm == j else j]}: together score {start:.4f} -> {end:.4f})", sb, sa, item)
            for k, (vm, src, dst, reason, sb, sa) in enumerate(done)]
