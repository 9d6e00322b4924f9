"""`softudc bench balance`: the balancer against the exact optimum, and its planning time at scale.

Small clusters (5-20 identical hosts, 4 VMs per host, a draining host and anti-affinity triples in
some): OR-tools CP-SAT finds the best score, then the fewest moves reaching it. The score is the
same for both: all hosts are 16 cores / 64 GiB and use comes in units of 1/64 of a host (a quarter
core, 1 GiB), so with every VM on a ready host the spread falls exactly when the integer sum of
squared per-host CPU and memory units falls; CP-SAT minimises that sum under the hard rules
(capacity by allocation, anti-affinity, nothing left on the draining host), then the moves. Ours
is `balance()` as the manager runs it (for clusters this small: the greedy plan, then local search
with exchanges and CP-SAT for the fewest moves, 5 s in all, see `placement.exact`), with no
per-step limits; scored with `score` on its plan applied; gaps are relative to CP-SAT's score (0
when ours is lower: CP-SAT's answer is its best within the time limit, not always the optimum).
By default CP-SAT's first solve is hinted with our plan's placement, so the reference is the best
placement known and its moves the fewest CP-SAT finds at that score (`hinted=False`: CP-SAT alone).

Large clusters (1000 x 10000, 10000 x 100000): mixed host and VM sizes, skewed placement within
capacity, one draining host, anti-affinity groups; planning time and the hard-rule breaks the plan
itself makes (checked move by move, independently of the balancer).
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from typing import Any

from ortools.sat.python import cp_model

from softudc.placement.balance import Limits, Plan, balance
from softudc.placement.cluster import BHost, BVm, Cluster
from softudc.placement.model import Group
from softudc.placement.score import score

SMALL = [(5, 20, 1), (6, 24, 2), (8, 32, 3), (10, 40, 4), (12, 48, 5), (15, 60, 6), (20, 80, 7), (20, 80, 8)]
LARGE = {"1000x10000": (1000, 10_000), "10000x100000": (10_000, 100_000)}
HOST_SHAPES = [(32, 128 * 1024), (64, 256 * 1024), (16, 64 * 1024)]
VM_SHAPES = [(1, 2048), (2, 4096), (4, 8192), (1, 4096), (2, 8192), (4, 16384)]  # ~55% of CPU allocated
UNIT_C, UNIT_M = 0.25, 1024  # 1/64 of a small-instance host
NO_LIMITS = Limits(max_per_source=10**6, max_per_destination=10**6, max_per_step=10**6)


def _skewed(rng: random.Random, hosts: list[BHost], shapes: list[tuple[int, int]]) -> list[str | None]:
    """A host per VM shape, drawn with weights favouring low-numbered hosts, within capacity."""
    free = {h.name: [h.vcpus, h.memory_mib] for h in hosts}
    weights = [1.0 / (1 + i) ** 0.5 for i in range(len(hosts))]
    out: list[str | None] = []
    for c, m in shapes:
        for _ in range(20):
            h = rng.choices(hosts, weights)[0].name
            if free[h][0] >= c and free[h][1] >= m:
                free[h][0] -= c
                free[h][1] -= m
                out.append(h)
                break
        else:
            out.append(None)
    return out


def synthetic(n_hosts: int, n_vms: int, seed: int, small: bool) -> Cluster:
    rng = random.Random(seed)
    hosts = [BHost(f"h{i}", *((16, 65536) if small else rng.choice(HOST_SHAPES)),
                   state="draining" if i == 0 and (not small or seed % 2 == 0) else "ready") for i in range(n_hosts)]
    shapes = [rng.choice(VM_SHAPES[:3]) for _ in range(n_vms)]
    where = _skewed(rng, hosts, shapes)
    groups: dict[str, Group] = {}
    vms: list[BVm] = []
    for i, ((c, m), h) in enumerate(zip(shapes, where, strict=True)):
        if h is None:
            continue
        group = None
        if rng.random() < 0.15:
            group = f"g{i // 3}"
            groups.setdefault(group, Group(group, "anti-affinity", 1))
        cpu = rng.randint(0, int(c / UNIT_C)) * UNIT_C if small else rng.uniform(0, c)
        mem = rng.randint(1, m // UNIT_M) * UNIT_M if small else rng.uniform(0.2, 1) * m
        vms.append(BVm(f"vm-{i}", h, c, m, cpu_use=cpu, mem_use_mib=mem, group=group))
    return _fix_groups(Cluster(hosts, vms, groups))


def _fix_groups(c: Cluster) -> Cluster:
    """Drop group membership where the initial placement already breaks it (the bench starts legal)."""
    seen: Counter[tuple[str, str]] = Counter()
    vms = []
    for v in c.vms:
        if v.group is not None:
            seen[(v.group, v.host)] += 1
            if seen[(v.group, v.host)] > 1:
                v = BVm(v.name, v.host, v.vcpus, v.memory_mib, v.cpu_use, v.mem_use_mib, None)
        vms.append(v)
    return Cluster(c.hosts, vms, c.groups)


def plan_breaks(c: Cluster, plan: Plan) -> int:
    """Moves that break a hard rule, replayed in order: destination not ready, no room, anti-affinity."""
    hosts = {h.name: h for h in c.hosts}
    vm = {v.name: v for v in c.vms}
    alloc: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    members: Counter[tuple[str, str]] = Counter()
    for v in c.vms:
        alloc[v.host] += v.vcpus
        mem[v.host] += v.memory_mib
        members[(v.group or "", v.host)] += 1
    bad = 0
    for m in plan.moves:
        v, d = vm[m.vm], hosts[m.destination]
        alloc[m.source] -= v.vcpus
        mem[m.source] -= v.memory_mib
        members[(v.group or "", m.source)] -= 1
        alloc[d.name] += v.vcpus
        mem[d.name] += v.memory_mib
        members[(v.group or "", d.name)] += 1
        limit = c.groups[v.group].limit if v.group else None
        bad += (d.state != "ready" or alloc[d.name] > d.vcpus or mem[d.name] > d.memory_mib
                or (limit is not None and members[(v.group or "", d.name)] > limit))
    return bad


def _hint(m: cp_model.CpModel, x: dict[tuple[str, str], cp_model.IntVar], where: dict[str, str]) -> None:
    m.clear_hints()  # type: ignore[no-untyped-call]
    for (vm, host), var in x.items():
        if vm in where:
            m.add_hint(var, where[vm] == host)


def optimum(c: Cluster, seconds: float, start: dict[str, str] | None = None) -> dict[str, Any]:
    """CP-SAT: the lowest sum of squared per-host units, then the fewest moves reaching it.

    `start` (vm -> host, a placement keeping every hard rule) is given to the first solve as a hint:
    CP-SAT then searches from the best placement known, so its answer is never worse than that one."""
    ready = [h for h in c.hosts if h.state == "ready"]
    m = cp_model.CpModel()
    x = {(v.name, h.name): m.new_bool_var(f"{v.name}@{h.name}") for v in c.vms for h in ready}
    squares = []
    for v in c.vms:
        m.add_exactly_one(x[(v.name, h.name)] for h in ready)
    for h in ready:
        m.add(sum(v.vcpus * x[(v.name, h.name)] for v in c.vms) <= h.vcpus)
        m.add(sum(v.memory_mib * x[(v.name, h.name)] for v in c.vms) <= h.memory_mib)
        for kind, unit in (("cpu", UNIT_C), ("mem", UNIT_M)):
            use = [round((v.cpu if kind == "cpu" else v.mem) / unit) for v in c.vms]
            load = m.new_int_var(0, sum(use), f"{kind}@{h.name}")
            m.add(load == sum(u * x[(v.name, h.name)] for u, v in zip(use, c.vms, strict=True)))
            sq = m.new_int_var(0, sum(use) ** 2, f"{kind}2@{h.name}")
            m.add_multiplication_equality(sq, [load, load])
            squares.append(sq)
    for g in c.groups.values():
        for h in ready:
            m.add(sum(x[(v.name, h.name)] for v in c.vms if v.group == g.name) <= (g.limit or len(c.vms)))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.num_workers = 2
    _hint(m, x, start or {})
    t0 = time.perf_counter()
    m.minimize(sum(squares))
    st1 = solver.solve(m)
    if st1 not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"CP-SAT found no placement in {seconds} s ({solver.status_name(st1)})")
    best = int(solver.objective_value)
    where = {v.name: h.name for v in c.vms for h in ready if solver.value(x[(v.name, h.name)])}
    _hint(m, x, where)  # the second solve starts from the first one's answer
    m.add(sum(squares) <= best)
    stays = [x[(v.name, v.host)] for v in c.vms if (v.name, v.host) in x]
    m.minimize(len(c.vms) - sum(stays))
    st2 = solver.solve(m)
    if st2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        where = {v.name: h.name for v in c.vms for h in ready if solver.value(x[(v.name, h.name)])}
    moves = {n: h for n, h in where.items() if h != next(v.host for v in c.vms if v.name == n)}
    return {"score": score(c.moved(moves)).total, "moves": len(moves), "seconds": time.perf_counter() - t0,
            "proved_optimal": st1 == cp_model.OPTIMAL and st2 == cp_model.OPTIMAL}


def _small(n_hosts: int, n_vms: int, seed: int, seconds: float, hinted: bool) -> dict[str, Any]:
    c = synthetic(n_hosts, n_vms, seed, small=True)
    t0 = time.perf_counter()
    plan = balance(c, min_gain=1e-4, limits=NO_LIMITS)
    seconds_ours = round(time.perf_counter() - t0, 4)
    ours = {"score": round(plan.score_after, 5), "moves": len(plan.moves), "seconds": seconds_ours,
            "moves_in_exchanges": sum(m.item is not None for m in plan.moves)}
    ends = {v.name: v.host for v in c.moved({m.vm: m.destination for m in plan.moves}).vms}
    opt = optimum(c, seconds, ends if hinted else None) | {"hinted_with_ours": hinted}
    gap = 0.0 if plan.score_after <= opt["score"] + 1e-9 else (plan.score_after - opt["score"]) / opt["score"] * 100
    ratio = len(plan.moves) / opt["moves"] if opt["moves"] else (1.0 if not plan.moves else float(len(plan.moves)))
    gain = plan.score_before - opt["score"]
    out = {"hosts": n_hosts, "vms": len(c.vms), "seed": seed, "score_before": round(plan.score_before, 5),
           "improvement_reached_pct": round(100 * (plan.score_before - plan.score_after) / gain, 2)
           if gain > 0 else 100.0,
           "ours": ours, "cpsat": {k: round(v, 5) if isinstance(v, float) else v for k, v in opt.items()},
           "score_gap_pct": round(gap, 2), "moves_ratio": round(ratio, 3)}
    print(f"[{n_hosts}x{len(c.vms)} seed {seed}] ours {ours} cp-sat {out['cpsat']}", file=sys.stderr, flush=True)
    return out


def _large(name: str, n_hosts: int, n_vms: int) -> dict[str, Any]:
    c = synthetic(n_hosts, n_vms, 1, small=False)
    t0 = time.perf_counter()
    plan = balance(c)
    seconds = time.perf_counter() - t0
    out = {"seconds": round(seconds, 3), "violations": plan_breaks(c, plan), "vms": len(c.vms),
           "moves": len(plan.moves), "steps": len(plan.steps), "score_before": round(plan.score_before, 4),
           "score_after": round(plan.score_after, 4)}
    print(f"[{name}] {out}", file=sys.stderr, flush=True)
    return out


def run_balance(small: list[tuple[int, int, int]] | None = None, large: list[str] | None = None,
                cpsat_seconds: float = 20.0, hinted: bool = True) -> dict[str, Any]:
    """`hinted`: CP-SAT starts from our plan's placement (its answer is then the best known, never worse
    than ours); without, it searches on its own (an independent reference, but often not the optimum)."""
    instances = [_small(h, v, s, cpsat_seconds, hinted) for h, v, s in (SMALL if small is None else small)]
    return {
        "benchmark": "balance",
        "vs_optimum": {"instances": len(instances),
                       "worst_score_gap_pct": max((i["score_gap_pct"] for i in instances), default=0.0),
                       "worst_moves_ratio": max((i["moves_ratio"] for i in instances), default=0.0),
                       "worst_improvement_reached_pct": min((i["improvement_reached_pct"] for i in instances),
                                                           default=100.0),
                       "all_proved_optimal": all(i["cpsat"]["proved_optimal"] for i in instances),
                       "detail": instances},
        "planning": {n: _large(n, *LARGE[n]) for n in (list(LARGE) if large is None else large)},
        "targets": {"worst_score_gap_pct": 5.0, "worst_moves_ratio": 1.2, "1000x10000_s": 2.0, "10000x100000_s": 20.0},
    }
