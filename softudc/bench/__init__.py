"""`softudc bench NAME`: measurements that compare side by side in one run and report ratios."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def run_bench(name: str, *, reps: int, as_json: bool, seconds: float, offloads: bool = True,
              designs: list[str] | None = None, runs: int = 10, hosts: list[int] | None = None,
              backends: list[str] | None = None, flood: str = "multicast") -> None:
    if name not in _PRINTERS:  # argparse restricts the choices; this is for library callers
        raise ValueError(f"unknown benchmark {name!r}")
    result = _measure(name, reps=reps, seconds=seconds, offloads=offloads, designs=designs, runs=runs,
                      hosts=hosts, backends=backends, flood=flood)
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        _PRINTERS[name](result)


def _measure(name: str, *, reps: int, seconds: float, offloads: bool, designs: list[str] | None,
             runs: int, hosts: list[int] | None = None, backends: list[str] | None = None,
             flood: str = "multicast") -> dict[str, Any]:
    # Imported on use: each benchmark pulls in what it drives (a lab, a manager), which the others need not load.
    if name == "dataplane":
        from softudc.bench.dataplane import run_dataplane

        return run_dataplane(reps=reps, seconds=seconds, offloads=offloads, designs=designs)
    if name == "placement":
        from softudc.bench.placement import run_placement

        return run_placement()
    if name == "migration":
        from softudc.bench.migration import run_migration

        return run_migration(runs=runs, flood=flood)
    if name == "manager":
        from softudc.bench.manager import run_manager

        return run_manager(hosts=hosts, backends=backends, seconds=seconds)
    if name == "images":
        from softudc.bench.images import run_images

        return run_images()
    if name == "balance":
        from softudc.bench.balance import run_balance

        return run_balance()
    if name == "ha":
        from softudc.bench.ha import run_ha

        return run_ha(runs=runs)
    if name == "console":
        from softudc.bench.console import run_console

        return run_console()
    if name == "volumes":
        from softudc.bench.volumes import run_volumes

        return run_volumes()
    from softudc.bench.reconcile import run_reconcile

    return run_reconcile()


def _print_dataplane(result: dict[str, Any]) -> None:
    from softudc.bench.report import print_table

    print_table(result)


def _print_placement(result: dict[str, Any]) -> None:
    for cluster, r in result["clusters"].items():
        print(cluster, r)


def _print_migration(result: dict[str, Any]) -> None:
    for mode in ("vnet", "plain_l2"):
        print(mode, {k: round(v, 1) for k, v in result[mode].items()})
    print(result["ratios"])


def _print_reconcile(result: dict[str, Any]) -> None:
    for farms, r in result["farms"].items():
        print(f"{farms} farms", {k: round(v, 2) for k, v in r.items()})
    print(result["ratios"])


def _print_manager(result: dict[str, Any]) -> None:
    cols = ["hosts", "admin_p50_ms", "admin_p99_ms", "report_p50_ms", "report_p99_ms", "cpu_pct", "rss_mib",
            "apply_to_all_s", "clients_cpu_pct"]
    print(f"{'backend':8}" + "".join(f"{c:>16}" for c in cols))
    for run in result["runs"]:
        print(f"{run['backend']:8}" + "".join(f"{run.get(c, '-')!s:>16}" for c in cols))
    print("targets:", result["targets"])
    for line in result.get("notes", []):
        print(line)


def _print_images(result: dict[str, Any]) -> None:
    from softudc.bench.images import print_images

    print_images(result)


def _print_balance(result: dict[str, Any]) -> None:
    print("vs optimum:", {k: v for k, v in result["vs_optimum"].items() if k != "detail"})
    for name, r in result["planning"].items():
        print(name, r)


def _print_ha(result: dict[str, Any]) -> None:
    r = result["ha_restart"]
    print(f"kill -> answering elsewhere: median {r['median_s']} s over {r['runs']} run(s) "
          f"(placed {r['median_placed_s']} s; heartbeat timeout {r['heartbeat_timeout_s']:g} s; "
          f"target {r['target_s']:g} s)")
    for run in r["per_run"]:
        print(" ", run)


def _print_console(result: dict[str, Any]) -> None:
    from softudc.bench.console import print_console

    print_console(result)


def _print_volumes(result: dict[str, Any]) -> None:
    from softudc.bench.volumes import print_volumes

    print_volumes(result)


# the benchmarks by name, with how each prints its result for a reader (--json prints them all alike)
_PRINTERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "dataplane": _print_dataplane,
    "placement": _print_placement,
    "migration": _print_migration,
    "reconcile": _print_reconcile,
    "manager": _print_manager,
    "images": _print_images,
    "balance": _print_balance,
    "console": _print_console,
    "ha": _print_ha,
    "volumes": _print_volumes,
}
