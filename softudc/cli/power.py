"""`softudc host power H on|off|status|cycle|identify|fence` and `softudc host power-config H`.

Through the manager (its admin route, softudc/manager/apipower.py): the host's stored power config
picks the driver, powering off puts the host in `standby`, powering on brings it back to `ready`.
A lab host can also be switched directly, with the driver `softudc lab up` recorded for it
(`--lab NAME --direct`, or a lab without a manager): no manager involved, no host state changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import CliError, ok
from softudc.lab.state import load_lab
from softudc.power.driver import POWER_ACTIONS, PowerDriver
from softudc.power.factory import driver_for
from softudc.power.fence import fence


def _direct(a: argparse.Namespace) -> bool:
    if a.direct and not a.lab:
        raise CliError("--direct switches a lab host with the driver its lab recorded: name the lab with --lab")
    if a.direct:
        return True
    if a.lab:
        lab = load_lab(a.lab, a.state_dir)
        return not (lab.manager_pid or lab.managers)
    return False


def lab_driver(a: argparse.Namespace) -> PowerDriver:
    host = load_lab(a.lab, a.state_dir).host(a.name)
    if host.power is None:
        raise CliError(f"lab {a.lab}: {a.name} has no power config (a lab made before power drivers); "
                       f"recreate it: softudc lab down {a.lab}; softudc lab up {a.lab} ...")
    return driver_for(host.power)


def run_direct(a: argparse.Namespace) -> dict[str, Any]:
    driver = lab_driver(a)
    answer: dict[str, Any] = {"host": a.name, "action": a.action, "driver": driver.name}
    if a.action == "status":
        answer["power"] = driver.status()
    elif a.action == "fence":
        fenced = fence(driver, timeout=a.timeout)
        if not fenced.confirmed:
            raise CliError(f"{a.name}: {fenced.reason}")
        answer["reason"] = fenced.reason
    elif a.action == "identify":
        driver.identify(a.seconds)
    else:
        getattr(driver, a.action)()
    return answer


def _command(a: argparse.Namespace, action: str) -> dict[str, Any]:
    if _direct(a):
        return run_direct(argparse.Namespace(**{**vars(a), "action": action}))
    request = {"action": action, "seconds": a.seconds, "force": a.force, "timeout": a.timeout}
    body: dict[str, Any] = ok(*connect(a).call("POST", f"/v1/hosts/{a.name}/power", json.dumps(request)))
    return body


def wait_for(a: argparse.Namespace, want: str, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> float:
    """Poll the power status until it is `want` (a BMC takes on/off before the machine follows),
    with a progress line; a CliError after `a.wait` seconds."""
    start = clock()
    while (now := _command(a, "status")["power"]) != want:
        if clock() - start > a.wait:
            raise CliError(f"{a.name}: still {now} {a.wait:g} s after the command (see `softudc host power "
                           f"{a.name} status`; raise --wait)")
        print(f"\r  {a.name}: {now}, waiting for {want} ({clock() - start:.0f} s)", end="", file=sys.stderr,
              flush=True)
        sleep(0.5)
    return clock() - start


def cmd_host_power(a: argparse.Namespace) -> None:
    body = _command(a, a.action)
    if a.wait and a.action in ("on", "off", "cycle"):
        body["waited_s"] = round(wait_for(a, "off" if a.action == "off" else "on"), 2)
    if a.json:
        print(json.dumps(body, indent=2))
        return
    what = body["power"] if a.action == "status" else {"on": "powered on", "off": "powered off",
                                                       "cycle": "power-cycled",
                                                       "identify": f"identify LED on for {a.seconds} s",
                                                       "fence": "fenced (confirmed off)"}[a.action]
    state = f" (host state: {body['state']})" if "state" in body else f" (directly, {body['driver']})"
    waited = f"; {body['waited_s']} s until its status said so" if "waited_s" in body else ""
    print(f"{a.name}: {what}{state}{waited}")


def cmd_power_config(a: argparse.Namespace) -> None:
    api = connect(a)
    if a.file is None:
        body = ok(*api.call("GET", f"/v1/hosts/{a.name}/power-config"))
    else:
        try:
            text = sys.stdin.read() if a.file == "-" else Path(a.file).read_text()
            config = yaml.safe_load(text)  # JSON is YAML too
        except (OSError, yaml.YAMLError) as e:
            raise CliError(f"{a.file}: {e}; give a power config as YAML or JSON (docs/power.md)") from None
        body = ok(*api.call("PUT", f"/v1/hosts/{a.name}/power-config", json.dumps(config)))
    print(json.dumps(body, indent=2))


def add_power_parsers(hosts: Any) -> None:
    """Under `softudc host`: `power` and `power-config`."""
    p = hosts.add_parser("power", help="power a host on or off, cycle it, its power status, its identify LED")
    p.add_argument("name")
    p.add_argument("action", choices=[*POWER_ACTIONS, "fence"], help="fence: off and confirmed off (a host that "
                   "stopped answering; through the manager, a live one needs --force)")
    p.add_argument("--seconds", type=int, default=15, help="identify: how long the LED is lit (0: off; at most 255)")
    p.add_argument("--force", action="store_true", help="off/cycle: even with instances placed on the host; "
                   "fence: even a host that is not down")
    p.add_argument("--timeout", type=float, default=30.0, help="fence: seconds to confirm the host off")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="on/off/cycle: poll the status "
                   "until it follows, at most this long (a BMC acknowledges before the machine is up)")
    p.add_argument("--direct", action="store_true", help="with --lab: the lab's own driver, not through the manager")
    p.add_argument("--json", action="store_true")
    add_arguments(p)
    p.set_defaults(fn=cmd_host_power)
    c = hosts.add_parser("power-config", help="show a host's power config, or set it with -f FILE (no password in "
                                             "it: `password_file`)")
    c.add_argument("name")
    c.add_argument("-f", "--file", help="a YAML or JSON power config ('-': standard input)")
    add_arguments(c)
    c.set_defaults(fn=cmd_power_config)
