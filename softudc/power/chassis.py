"""The chassis-control program of a lab host's `ipmi_sim`: IPMI chassis commands become the lab
driver's (softudc/power/lab.py).

ipmi_sim runs its `chassis_control` program for each chassis request (OpenIPMI lanserv,
bmc_chassis.c) as `PROGRAM get PARM...` — answer one `PARM:VALUE` line each — or
`PROGRAM set PARM VALUE [PARM VALUE...]` — answer nothing on success, or an error line with a
non-zero exit. Parameters: `power` (1/0), `reset` (a pulse), `boot`, `shutdown` (graceful), and
`identify` (one argument holding two values: "SECONDS FORCE"). Here:

    python -m softudc.power.chassis --state-dir D LAB HOST get power       -> power:1
    python -m softudc.power.chassis --state-dir D LAB HOST set power 0     (the host's processes cut)
    python -m softudc.power.chassis --state-dir D LAB HOST set power 1     (returns at once; see below)
    python -m softudc.power.chassis --state-dir D LAB HOST set identify "15 0"

ipmi_sim waits for the program and answers nothing else meanwhile, and a power-on (libvirtd and a
gatekeeper starting) takes seconds: longer than ipmitool waits. So `set power 1` (and `reset`)
start a detached worker (`... poweron`, its output in `<host dir>/bmc/poweron.log`) and return, as a
real BMC acknowledges power-on before the machine is up; `status` reads "on" once it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from softudc.lab.state import load_lab
from softudc.power.driver import PowerError
from softudc.power.lab import LabPower, record_identify


def _get(power: LabPower, parms: list[str]) -> list[str]:
    out = []
    for parm in parms:
        if parm == "power":
            out.append(f"power:{1 if power.status() == 'on' else 0}")
        elif parm == "boot":
            out.append("boot:default")
        else:
            raise PowerError(f"chassis get {parm}: not supported (power, boot)")
    return out


def _set(power: LabPower, args: argparse.Namespace, pairs: list[str]) -> None:
    i = 0
    while i < len(pairs):
        parm = pairs[i]
        value = pairs[i + 1] if i + 1 < len(pairs) else ""
        if parm == "identify":  # one argument, "INTERVAL FORCE" (ipmi_sim 2.0.33 passes "20 0")
            record_identify(_host_dir(args), int(value.split()[0]))
        elif (parm, value) in (("power", "0"), ("shutdown", "1")):
            power.off()
        elif parm == "power" and value == "1":
            _spawn_poweron(args, cycle=False)
        elif parm == "reset" and value == "1":
            _spawn_poweron(args, cycle=True)
        elif parm != "boot":  # a boot device: accepted, there is nothing to boot from here
            raise PowerError(f"chassis set {parm} {value}: not supported (power, reset, shutdown, identify, boot)")
        i += 2


def _host_dir(args: argparse.Namespace) -> Path:
    lab: str = args.lab
    host: str = args.host
    return load_lab(lab, args.state_dir).dir / host


def _spawn_poweron(args: argparse.Namespace, cycle: bool) -> None:
    bmc = _host_dir(args) / "bmc"
    bmc.mkdir(parents=True, exist_ok=True)
    with open(bmc / "poweron.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "softudc.power.chassis", "--state-dir", args.state_dir, args.lab,
                          args.host, "cycle" if cycle else "poweron"], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="softudc.power.chassis", description=__doc__.split("\n\n")[0])
    p.add_argument("--state-dir", required=True)
    p.add_argument("lab")
    p.add_argument("host")
    p.add_argument("op", choices=["get", "set", "poweron", "cycle"])
    p.add_argument("rest", nargs="*")
    args = p.parse_args(argv)
    power = LabPower(args.lab, args.host, args.state_dir)
    try:
        if args.op == "get":
            print("\n".join(_get(power, args.rest)))
        elif args.op == "set":
            _set(power, args, args.rest)
        elif args.op == "cycle":
            power.cycle()
        else:
            power.on()
    except (PowerError, ValueError, IndexError) as e:
        print(f"softudc chassis {args.host}: {e}")  # ipmi_sim logs the program's standard output
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
