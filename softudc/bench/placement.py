"""`softudc bench placement`: synthetic clusters (100 hosts / 1k VMs, 1k / 10k, 10k / 100k) with
mixed host and VM sizes and anti-affinity groups, placed by `place` and by first-fit decreasing
in the same run. Violations are counted by the independent checker."""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from softudc.placement import Group, Host, Request, check, place, place_ffd

CLUSTERS = {"100x1000": (100, 1000), "1000x10000": (1000, 10_000), "10000x100000": (10_000, 100_000)}
HOST_SHAPES = [(32, 128 * 1024), (64, 256 * 1024), (16, 64 * 1024)]
VM_SHAPES = [(1, 1024), (1, 2048), (2, 4096), (4, 8192), (8, 16384)]


def cluster(n_hosts: int, n_vms: int, seed: int = 1) -> tuple[list[tuple[str, int, int]], list[Request], list[Group]]:
    rng = random.Random(seed)
    hosts = [(f"h{i}", *rng.choice(HOST_SHAPES)) for i in range(n_hosts)]
    groups: list[Group] = []
    requests: list[Request] = []
    i = 0
    while len(requests) < n_vms:
        vcpus, mem = rng.choice(VM_SHAPES)
        if rng.random() < 0.1:  # a tier of 3-5 replicas spread one per host
            g = Group(f"g{len(groups)}", "anti-affinity", 1)
            groups.append(g)
            for _ in range(min(rng.randint(3, 5), n_vms - len(requests))):
                requests.append(Request(f"vm-{i}", vcpus, mem, g.name))
                i += 1
        else:
            requests.append(Request(f"vm-{i}", vcpus, mem))
            i += 1
    return hosts, requests, groups


def run_placement(sizes: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "placement", "clusters": {}}
    for name in sizes or list(CLUSTERS):
        n_hosts, n_vms = CLUSTERS[name]
        shapes, requests, groups = cluster(n_hosts, n_vms)
        result = {}
        for label, algo in (("ours", place), ("ffd", place_ffd)):
            hosts = [Host(n, c, m) for n, c, m in shapes]
            t0 = time.perf_counter()
            plan = algo(hosts, requests, groups)
            seconds = time.perf_counter() - t0
            violations = check([Host(n, c, m) for n, c, m in shapes], requests, groups, plan)
            result[label] = {"seconds": round(seconds, 3), "placed": plan.placed, "hosts_used": plan.hosts_used(),
                             "unplaced": len(plan.unplaced), "violations": violations}
            print(f"[{name}] {label}: {seconds:.2f} s, placed {plan.placed}/{n_vms}, hosts used "
                  f"{plan.hosts_used()}, violations {violations}", file=sys.stderr, flush=True)
        out["clusters"][name] = result
    return out
