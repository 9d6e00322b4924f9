"""`softudc bench NAME`: measurements that compare side by side in one run and report ratios."""

from __future__ import annotations

import json
import sys


def run_bench(name: str, *, reps: int, as_json: bool, seconds: float, offloads: bool = True,
              designs: list[str] | None = None, runs: int = 10) -> None:
    if name == "dataplane":
        from softudc.bench.dataplane import run_dataplane

        result = run_dataplane(reps=reps, seconds=seconds, offloads=offloads, designs=designs)
    elif name == "placement":
        from softudc.bench.placement import run_placement

        result = run_placement()
    elif name == "migration":
        from softudc.bench.migration import run_migration

        result = run_migration(runs=runs)
    elif name == "reconcile":
        from softudc.bench.reconcile import run_reconcile

        result = run_reconcile()
    else:  # argparse restricts the choices; this is for library callers
        raise ValueError(f"unknown benchmark {name!r}")
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        print()
    elif name == "placement":
        for cluster, r in result["clusters"].items():
            print(cluster, r)
    elif name == "migration":
        for mode in ("vnet", "plain_l2"):
            print(mode, {k: round(v, 1) for k, v in result[mode].items()})
        print(result["ratios"])
    elif name == "reconcile":
        for farms, r in result["farms"].items():
            print(f"{farms} farms", {k: round(v, 2) for k, v in r.items()})
        print(result["ratios"])
    else:
        from softudc.bench.report import print_table

        print_table(result)
