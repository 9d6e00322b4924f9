"""`softudc host upgrade --hosts SELECTOR --run SCRIPT [--max-unavailable N]` and
`softudc host upgrade-status [NAME]`, `softudc host upgrade-stop NAME` (softudc/manager/rollout.py).

upgrade: the manager, per host and at most N at a time, drains it, runs SCRIPT (on the manager's
machine, as `SCRIPT HOST ADDRESS`; a lab host's in its namespace), power-cycles it, waits until it
reports again and undrains it; it stops at the first failure with that host left drained. The
script's text is sent (it runs wherever the leading manager is). The command follows the rollout
(a line per host's phase change) until it ends, or returns at once with --no-wait; a manager
restart meanwhile does not stop it: `softudc host upgrade-status NAME --wait` follows it again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import CliError, ok


def lines(r: dict[str, Any]) -> list[str]:
    """One line per host: its phase, and why when it failed."""
    out = []
    for h in r["hosts"]:
        p = r["progress"][h]
        out.append(f"  {h}: {p['phase']}" + (f" ({p['reason']})" if p.get("reason") else ""))
    return out


def follow(a: argparse.Namespace, name: str, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the rollout, printing each host's phase as it changes, until it ends or a.timeout."""
    api, start, said = connect(a), clock(), set()
    while True:
        r: dict[str, Any] = ok(*api.call("GET", f"/v1/rollouts/{name}"))
        for line in lines(r):
            if line not in said:
                said.add(line)
                print(f"{clock() - start:6.0f} s {line.strip()}", file=sys.stderr, flush=True)
        if r["state"] != "running":
            return r
        if clock() - start > a.timeout:
            raise CliError(f"rollout {name} still running after {a.timeout:g} s (it goes on; `softudc host "
                           f"upgrade-status {name} --wait` follows it again)")
        sleep(1.0)


def _ended(r: dict[str, Any]) -> None:
    print(f"rollout {r['name']}: {r['state']}: {r['reason']}")
    if r["state"] == "failed":
        raise CliError(f"rollout {r['name']} stopped: {r['reason']}; the failed host is left drained (maintenance): "
                       "fix it, then `softudc host undrain H`, and start a rollout of the hosts left")
    if r["state"] == "stopped":
        raise CliError(f"rollout {r['name']} was stopped ({r['reason']}); a host left drained comes back with "
                       "`softudc host undrain H`")


def cmd_upgrade(a: argparse.Namespace) -> None:
    try:
        script = Path(a.run).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"--run {a.run}: {e}; give a script file (it runs as `SCRIPT HOST ADDRESS`)") from None
    body = {"hosts": a.hosts, "script": script, "script_name": Path(a.run).name, "max_unavailable": a.max_unavailable,
            "drain_s": a.drain_timeout, "script_s": a.script_timeout, "rejoin_s": a.rejoin_timeout,
            **({"name": a.rollout} if a.rollout else {})}
    r: dict[str, Any] = ok(*connect(a).call("POST", "/v1/rollouts", json.dumps(body)))
    print(f"rollout {r['name']}: {', '.join(r['hosts'])}, at most {r['max_unavailable']} at once", file=sys.stderr)
    if a.no_wait:
        print(r["name"])
        return
    _ended(follow(a, r["name"]))


def cmd_status(a: argparse.Namespace) -> None:
    api = connect(a)
    if a.rollout is None:
        for r in ok(*api.call("GET", "/v1/rollouts")):
            print(f"{r['name']}: {r['state']} ({', '.join(r['hosts'])}){': ' + r['reason'] if r['reason'] else ''}")
        return
    if a.wait:
        _ended(follow(a, a.rollout))
        return
    r = ok(*api.call("GET", f"/v1/rollouts/{a.rollout}"))
    print(f"rollout {r['name']}: {r['state']}" + (f": {r['reason']}" if r["reason"] else ""))
    print("\n".join(lines(r)))


def cmd_stop(a: argparse.Namespace) -> None:
    r = ok(*connect(a).call("POST", f"/v1/rollouts/{a.rollout}/stop", "{}"))
    print(f"rollout {r['name']}: {r['state']}: {r['reason']}")


def add_upgrade_parsers(hosts: Any) -> None:
    """Under `softudc host`: `upgrade`, `upgrade-status` and `upgrade-stop`."""
    u = hosts.add_parser("upgrade", help="rolling maintenance: per host drain, run a script, power-cycle, rejoin, "
                                         "undrain; stops at the first failure")
    u.add_argument("--hosts", required=True, help="h1,h2 | globs (h*) | all, in this order")
    u.add_argument("--run", required=True, metavar="SCRIPT", help="run per host as `SCRIPT HOST ADDRESS` (env "
                   "SOFTUDC_HOST, SOFTUDC_HOST_ADDRESS) on the manager's machine; a lab host's in its namespace")
    u.add_argument("--max-unavailable", type=int, default=1, help="hosts out of service at once")
    u.add_argument("--name", dest="rollout", help="the rollout's name (default: rollout-<time>)")
    u.add_argument("--drain-timeout", type=float, default=900.0)
    u.add_argument("--script-timeout", type=float, default=600.0)
    u.add_argument("--rejoin-timeout", type=float, default=300.0, help="after the power cycle: report within")
    u.add_argument("--timeout", type=float, default=7200.0, help="how long this command follows the rollout")
    u.add_argument("--no-wait", action="store_true", help="start it and print its name")
    add_arguments(u)
    u.set_defaults(fn=cmd_upgrade)
    s = hosts.add_parser("upgrade-status", help="the rollouts, or one with each host's phase")
    s.add_argument("rollout", nargs="?")
    s.add_argument("--wait", action="store_true", help="follow it until it ends")
    s.add_argument("--timeout", type=float, default=7200.0)
    add_arguments(s)
    s.set_defaults(fn=cmd_status)
    t = hosts.add_parser("upgrade-stop", help="stop a rollout: no further phase starts (hosts under way end theirs)")
    t.add_argument("rollout")
    add_arguments(t)
    t.set_defaults(fn=cmd_stop)
