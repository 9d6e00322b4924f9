"""`softudc top hosts|vms`: what hosts and VMs use, from the manager (GET /v1/load/hosts|vms).

hosts: host, state, CPU used of capacity (cores, short mean, and %), memory likewise, VMs, how
old the sample is. vms: farm, VM, host, CPU cores and memory (short and long means), age.
`-o json` prints the API's answer; `--watch S` redraws every S seconds until interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import ok


def _pct(used: Any, capacity: Any) -> str:
    if not isinstance(used, int | float) or not isinstance(capacity, int | float) or capacity <= 0:
        return "-"
    return f"{100.0 * used / capacity:.0f}%"


def host_rows(hosts: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["HOST", "STATE", "CPU", "CPU%", "MEM MiB", "MEM%", "VMS", "AGE"]]
    for h in hosts:
        cap = h.get("capacity", {})
        cpu, mem = h.get("cpu_cores", {}).get("short"), h.get("memory_mib", {}).get("short")
        rows.append([h["host"], h["state"],
                     f"{cpu:.2f}/{cap.get('cpu_cores')}" if cpu is not None else "-", _pct(cpu, cap.get("cpu_cores")),
                     f"{mem:.0f}/{cap.get('memory_mib')}" if mem is not None else "-",
                     _pct(mem, cap.get("memory_mib")), str(h.get("vms", 0)),
                     f"{h['age_s']:.0f}s" if "age_s" in h else "never"])
    return rows


def vm_rows(vms: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["FARM", "VM", "HOST", "CPU 1m", "CPU 10m", "MEM MiB 1m", "MEM MiB 10m", "AGE"]]
    for v in vms:
        rows.append([v["farm"], v["vm"], v["host"], f"{v['cpu_cores']['short']:.2f}", f"{v['cpu_cores']['long']:.2f}",
                     f"{v['memory_mib']['short']:.0f}", f"{v['memory_mib']['long']:.0f}", f"{v['age_s']:.0f}s"])
    return rows


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def render(a: argparse.Namespace) -> str:
    body = ok(*connect(a).call("GET", f"/v1/load/{a.what}"))
    if a.output == "json":
        return json.dumps(body, indent=2)
    return table(host_rows(body) if a.what == "hosts" else vm_rows(body))


def cmd_top(a: argparse.Namespace, sleep: Callable[[float], None] = time.sleep) -> None:
    if not a.watch:
        print(render(a))
        return
    try:
        while True:
            text = render(a)
            if sys.stdout.isatty():
                print("\033[H\033[J", end="")
            print(f"{time.strftime('%H:%M:%S')}  every {a.watch:g} s (Ctrl-C ends)\n{text}\n", flush=True)
            sleep(a.watch)
    except KeyboardInterrupt:
        return


def add_top_parser(sub: Any) -> None:
    t = sub.add_parser("top", help="what hosts or VMs use: CPU and memory, short (1 min) and long (10 min) means")
    t.add_argument("what", choices=["hosts", "vms"])
    t.add_argument("-o", "--output", choices=["table", "json"], default="table")
    t.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS until Ctrl-C")
    add_arguments(t)
    t.set_defaults(fn=cmd_top)
