"""`softudc host drain H [--wait]` and `softudc host undrain H` (softudc/manager/drain.py).

drain: the manager plans every VM's destination first; if any cannot move it refuses, naming
each, and nothing moves. Otherwise H is `draining`, its VMs migrate a few at a time, and H goes to
`maintenance` once empty. `--wait` follows it ("3/5 moved") until then or `--timeout`.
`--power-off`: once empty, the manager powers H off through its power driver (confirmed) and
lights its identify LED; with `--wait`, followed until it is off.
undrain: H back to `ready`; one its drain powered off is powered on first, and undrain follows it
until it reports (`--timeout`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import CliError, ok
from softudc.cli.follow import follow_progress


def _line(p: dict[str, Any]) -> str:
    moving = f", moving: {', '.join(p['moving'])}" if p["moving"] else ""
    power = f", power {p.get('power', 'to go off')}" if p.get("power_off") else ""
    why = f" ({p['power_reason']})" if p.get("power") == "failed" else ""
    return f"{p['host']}: {p['state']}, {p['moved']}/{p['total']} moved{moving}{power}{why}"


def _busy(p: dict[str, Any]) -> bool:
    """Whether a drain (or an undrain powering the host on) is still under way."""
    return p["state"] == "draining" or p.get("power") == "starting" or (
        p["state"] == "maintenance" and bool(p.get("power_off")) and p.get("power") not in ("off", "failed"))


def follow(a: argparse.Namespace, first: dict[str, Any], clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the drain's progress until the host is in maintenance; a CliError after a.timeout."""
    api = connect(a)
    return follow_progress(first, lambda: ok(*api.call("GET", f"/v1/hosts/{a.name}/drain")), _busy, _line,
                           a.timeout, lambda p: f"; left: {', '.join(p['left'])} (the drain goes on: `softudc host "
                           f"drain {a.name} --wait` follows it again; `softudc events --kind farm` says why a move "
                           "is slow)", clock, sleep)


def cmd_drain(a: argparse.Namespace) -> None:
    p = ok(*connect(a).call("POST", f"/v1/hosts/{a.name}/drain", json.dumps({"power_off": True} if a.power_off
                                                                             else {})))
    if a.power_off and not p.get("power_off"):
        raise CliError(f"{_line(p)}; but this manager ignored --power-off (a version without it): power the host "
                       f"off yourself once it is in maintenance: softudc host power {a.name} off")
    if a.wait:
        p = follow(a, p)
    print(_line(p))
    if p.get("power") == "failed":
        raise CliError(f"{a.name} is drained but not powered off: {p.get('power_reason')}")


def cmd_undrain(a: argparse.Namespace) -> None:
    p = ok(*connect(a).call("POST", f"/v1/hosts/{a.name}/undrain", "{}"))
    if p.get("power") == "starting":
        print(f"  {a.name}: powering on, waiting for it to report", file=sys.stderr)
        p = follow(a, p)
        if p.get("power") == "on failed":
            raise CliError(f"{a.name}: {p.get('power_reason')}; still in maintenance (undrain again to retry)")
    print(f"{p['host']}: {p['state']}")


def add_drain_parsers(hosts: Any) -> None:
    d = hosts.add_parser("drain", help="move every VM off a host (all planned first, or none), then maintenance")
    d.add_argument("name")
    d.add_argument("--wait", action="store_true", help="follow the moves until the host is empty")
    d.add_argument("--timeout", type=float, default=900)
    d.add_argument("--power-off", action="store_true", help="once empty: power it off through its power driver "
                   "(confirmed) and light its identify LED; undrain powers it on")
    add_arguments(d)
    d.set_defaults(fn=cmd_drain)
    u = hosts.add_parser("undrain", help="a drained host (maintenance) back to ready")
    u.add_argument("name")
    u.add_argument("--timeout", type=float, default=300, help="a host powered off: how long to wait for it to report")
    add_arguments(u)
    u.set_defaults(fn=cmd_undrain)
