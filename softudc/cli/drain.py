"""`softudc host drain H [--wait]` and `softudc host undrain H` (softudc/manager/drain.py).

drain: the manager plans every VM's destination first; if any cannot move it refuses, naming
each, and nothing moves. Otherwise H is `draining`, its VMs migrate a few at a time, and H goes to
`maintenance` once empty. `--wait` follows it ("3/5 moved") until then or `--timeout`.
undrain: H back to `ready`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import CliError, ok


def _line(p: dict[str, Any]) -> str:
    moving = f", moving: {', '.join(p['moving'])}" if p["moving"] else ""
    return f"{p['host']}: {p['state']}, {p['moved']}/{p['total']} moved{moving}"


def follow(a: argparse.Namespace, first: dict[str, Any], clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the drain's progress until the host is in maintenance; a CliError after a.timeout."""
    api, p, start = connect(a), first, clock()
    while p["state"] == "draining":
        if clock() - start > a.timeout:
            raise CliError(f"{_line(p)} after {a.timeout:g} s; left: {', '.join(p['left'])} (the drain goes on: "
                           f"`softudc host drain {a.name} --wait` follows it again; `softudc events --kind farm` "
                           "says why a move is slow)")
        print(f"\r  {_line(p)}", end="", file=sys.stderr, flush=True)
        sleep(1.0)
        p = ok(*api.call("GET", f"/v1/hosts/{a.name}/drain"))
    print(file=sys.stderr)
    return p


def cmd_drain(a: argparse.Namespace) -> None:
    p = ok(*connect(a).call("POST", f"/v1/hosts/{a.name}/drain", "{}"))
    if a.wait:
        p = follow(a, p)
    print(_line(p))


def cmd_undrain(a: argparse.Namespace) -> None:
    p = ok(*connect(a).call("POST", f"/v1/hosts/{a.name}/undrain", "{}"))
    print(f"{p['host']}: {p['state']}")


def add_drain_parsers(hosts: Any) -> None:
    d = hosts.add_parser("drain", help="move every VM off a host (all planned first, or none), then maintenance")
    d.add_argument("name")
    d.add_argument("--wait", action="store_true", help="follow the moves until the host is empty")
    d.add_argument("--timeout", type=float, default=900)
    add_arguments(d)
    d.set_defaults(fn=cmd_drain)
    u = hosts.add_parser("undrain", help="a drained host (maintenance) back to ready")
    u.add_argument("name")
    add_arguments(u)
    u.set_defaults(fn=cmd_undrain)
