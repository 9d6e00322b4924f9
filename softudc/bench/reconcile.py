"""`softudc bench reconcile`: what one host report costs the manager as the farms grow (the audit's
scale.py shape, R11): F copies of configs/farms/shop.yaml on 4 hosts, the Manager called directly
(no HTTP, no TLS). Per F: the median time of a report that changes something (reconcile runs) and
of one that changes nothing (skipped). The ratio that matters is the growth: how the cost rises with
F, as an exponent (1: linear; the audit measured about 2 at f836a52: 163 ms at F=5, 2,018 ms at 20)."""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from softudc.manager.auth import Principal
from softudc.manager.service import Manager, init

FARM_COUNTS = (5, 10, 20, 40)
HOSTS = ("h1", "h2", "h3", "h4")
SHOP = Path(__file__).resolve().parents[2] / "configs" / "farms" / "shop.yaml"


def _report(vcpus: int) -> dict[str, Any]:
    return {"vcpus": vcpus, "memory_mib": 256 * 1024, "running": []}


def _one(farms: int, reports: int) -> dict[str, float]:
    admin = Principal("bench", "admin")
    shop = SHOP.read_text()
    with tempfile.TemporaryDirectory(prefix="sudc-bench-rec") as d:
        state = Path(d)
        init(state, ["127.0.0.1"])
        m = Manager(state)
        for h in HOSTS:
            m.store.put("host", h, {"joined": time.time()})
            m.host_status(h, h, _report(64))
        for i in range(farms):
            m.put_farm(admin, f"shop{i}", shop.replace("name: shop", f"name: shop{i}", 1), None)
        changed, same = [], []
        for k in range(reports):
            t = time.perf_counter()
            m.host_status("h1", "h1", _report(62 + k % 2))  # capacity moved: every farm is planned again
            m.settle()  # by the controller loop: the cost is the report and the pass it causes
            changed.append(time.perf_counter() - t)
            t = time.perf_counter()
            m.host_status("h2", "h2", _report(64))  # nothing new: reconcile is skipped
            m.settle()
            same.append(time.perf_counter() - t)
        m.close()  # the controller loop first: it reads the store
        m.store.close()
    return {"changed_ms": statistics.median(changed) * 1000, "unchanged_ms": statistics.median(same) * 1000}


def run_reconcile(reports: int = 20) -> dict[str, Any]:
    results: dict[str, dict[str, float]] = {}
    for f in FARM_COUNTS:
        results[str(f)] = r = _one(f, reports)
        print(f"[{f} farms] changed report {r['changed_ms']:.1f} ms, unchanged {r['unchanged_ms']:.2f} ms",
              file=sys.stderr, flush=True)
    lo, hi = results[str(FARM_COUNTS[0])], results[str(FARM_COUNTS[-1])]
    span = math.log(FARM_COUNTS[-1] / FARM_COUNTS[0])
    return {"benchmark": "reconcile", "hosts": len(HOSTS), "reports": reports, "farms": results,
            "ratios": {"changed_growth_exponent": math.log(hi["changed_ms"] / lo["changed_ms"]) / span,
                       "changed_vs_unchanged_at_max": hi["changed_ms"] / max(hi["unchanged_ms"], 1e-6)}}
