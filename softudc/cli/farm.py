"""`softudc plan -f FARM.yaml`: validate a farm descriptor and show where its VMs would go.

Until the manager exists this plans against hosts given on the command line (or a lab's hosts,
with the capacity each gatekeeper's machine has); `softudc apply --dry-run` will print the same
plan against the manager's inventory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from softudc.cli.errors import CliError
from softudc.manager.planner import plan_farm
from softudc.model.farm import validate
from softudc.model.source import DescriptorError
from softudc.placement import Host
from softudc.placement.model import fmt_mib


def _host_spec(text: str) -> Host:
    """NAME:VCPUS:MEMORY, e.g. h1:8:16Gi."""
    from softudc.model.farm import parse_size_mib

    try:
        name, vcpus, mem = text.split(":")
        mib = parse_size_mib(mem)
        if mib is None:
            raise ValueError
        return Host(name, int(vcpus), mib)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:VCPUS:MEMORY, e.g. h1:8:16Gi") from None


def cmd_plan(a: argparse.Namespace) -> None:
    path = Path(a.file)
    try:
        text = path.read_text()
    except OSError as e:
        raise CliError(f"{path}: {e.strerror}") from None
    try:
        farm = validate(text, str(path))
    except DescriptorError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        raise CliError(f"{path}: {len(e.problems)} problem(s); nothing was changed") from None
    hosts = list(a.host) if a.host else _lab_hosts(a)
    plan = plan_farm(farm, hosts, [])
    print(plan.render())
    used: dict[str, Any] = {h.name: h for h in hosts}
    for h in used.values():
        memory = f"{fmt_mib(h.used_memory_mib)}/{fmt_mib(h.memory_mib)}"
        print(f"  {h.name}: vCPUs {h.used_vcpus}/{h.vcpus}, memory {memory}")
    if plan.unplaced:
        sys.exit(1)


def _lab_hosts(a: argparse.Namespace) -> list[Host]:
    if not a.lab:
        raise CliError("give --host NAME:VCPUS:MEMORY (repeatable) or --lab NAME")
    from softudc.lab import load_lab

    lab = load_lab(a.lab, a.state_dir)
    mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    # Lab hosts share this machine: each is offered an equal share of it.
    return [Host(h.name, os.cpu_count() or 1, mem_mib // len(lab.hosts)) for h in lab.hosts]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="validate a farm descriptor and show its placement plan")
    p.add_argument("-f", "--file", required=True)
    p.add_argument("--host", action="append", type=_host_spec, help="NAME:VCPUS:MEMORY (repeatable)")
    p.add_argument("--lab", help="plan against a lab's hosts")
    p.set_defaults(fn=cmd_plan)
