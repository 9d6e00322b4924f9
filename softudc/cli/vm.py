"""`softudc vm ...`: VMs on a lab's hosts, through their gatekeepers; `vm migrate` of a farm's VM
goes through the lab's manager (NAME is `farm/instance`, or an instance name one farm has)."""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time
from typing import Any

from softudc.lab import Lab, LabError, load_lab
from softudc.lab.libvirt import migration_uri
from softudc.localapi import LocalApiClient, LocalApiError
from softudc.model.hoststate import SEPARATOR


def vm_mac(lab: str, name: str, nic: int = 0) -> str:
    digest = hashlib.sha256(f"{lab}/{name}/{nic}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _clients(lab: Lab) -> dict[str, LocalApiClient]:
    return {h.name: LocalApiClient(h.api_socket, timeout=120) for h in lab.hosts}


def find_vm(lab: Lab, name: str) -> str:
    hosts = [h for h, c in _clients(lab).items() if any(v["name"] == name for v in c.call("vm.list"))]
    if not hosts:
        raise LabError(f"no VM {name!r} on any host of lab {lab.spec.name} (see `softudc vm list --lab ...`)")
    if len(hosts) > 1:
        raise LabError(f"VM {name} is defined on {', '.join(hosts)}; it must run on exactly one host")
    return hosts[0]


def cmd_list(a: argparse.Namespace) -> None:
    lab = load_lab(a.lab, a.state_dir)
    stats = {}
    for host, c in _clients(lab).items():
        for s in c.call("vm.stats"):
            stats[s["name"]] = s
        for v in c.call("vm.list"):
            s = stats.get(v["name"], {})
            nics = ", ".join(f"vnet {n['vnet']} {n['mac']}" for n in v["nics"])
            cpu = s.get("cpu_time_ns", 0) / 1e9
            print(f"{v['name']:12} {host:4} {v['state']:8} cpu {cpu:7.1f} s  {nics}")


def cmd_start(a: argparse.Namespace) -> None:
    lab = load_lab(a.lab, a.state_dir)
    client = LocalApiClient(lab.host(a.host).api_socket, timeout=60)
    nic = {"vnet": a.vnet, "mac": a.mac or vm_mac(a.lab, a.name), "ip": a.ip}
    vm = client.call("vm.start", name=a.name, nics=[nic], vcpus=a.vcpus, memory_mib=a.memory)
    print(f"{vm['name']} running on {a.host}: vnet {a.vnet} {nic['mac']} {a.ip}")


def cmd_stop(a: argparse.Namespace) -> None:
    lab = load_lab(a.lab, a.state_dir)
    a.name = a.name.replace("/", SEPARATOR)  # a farm's VM: farm/instance is farm--instance on its host
    host = find_vm(lab, a.name)
    LocalApiClient(lab.host(host).api_socket, timeout=60).call("vm.stop", name=a.name, force=a.force)
    print(f"{a.name} stopped on {host}")


def cmd_migrate(a: argparse.Namespace) -> None:
    lab = load_lab(a.lab, a.state_dir)
    if lab.manager_pid:  # the manager's VMs move through it, or it would put them back
        from softudc.cli.admin import managed_instance, migrate_managed
        from softudc.cli.connect import LabApi

        target = managed_instance(LabApi(lab), a.name)
        if target:
            migrate_managed(LabApi(lab), *target, a.to, a.timeout)
            return
    src = find_vm(lab, a.name)
    if src == a.to:
        raise LabError(f"{a.name} already runs on {a.to}")
    dest = lab.host(a.to)
    client = LocalApiClient(lab.host(src).api_socket, timeout=600)
    result: dict[str, Any] = {}
    error: list[Exception] = []

    def run() -> None:
        try:
            result.update(client.call("vm.migrate", name=a.name, dest_uri=migration_uri(dest),
                                      bandwidth_mib=a.bandwidth, downtime_ms=a.downtime))
        except (LocalApiError, OSError) as e:
            error.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    poll = LocalApiClient(lab.host(src).api_socket, timeout=10)
    t0 = time.monotonic()
    while worker.is_alive():
        worker.join(0.3)
        try:
            job = poll.call("vm.job", name=a.name)
        except LocalApiError:
            continue
        total, done = job.get("data_total") or 0, job.get("data_processed") or 0
        pct = f"{100 * done / total:5.1f}%" if total else "  ...  "
        print(f"\r  {a.name}: {src} -> {a.to}  {job.get('state', '?'):9} {pct} "
              f"{done / 2**20:7.1f} MiB  {time.monotonic() - t0:5.1f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if error:
        raise error[0]
    downtime = LocalApiClient(dest.api_socket).call("vm.completed_job", name=a.name).get("downtime_ms")
    print(f"{a.name} now runs on {a.to} (migration {result.get('wall_ms')} ms, downtime {downtime} ms)")


def add_parser(sub: Any) -> None:
    vm = sub.add_parser("vm", help="VMs on lab hosts (through their gatekeepers)").add_subparsers(
        dest="sub", required=True)
    ls = vm.add_parser("list")
    ls.add_argument("--lab", required=True)
    ls.set_defaults(fn=cmd_list)
    st = vm.add_parser("start")
    st.add_argument("name")
    st.add_argument("--lab", required=True)
    st.add_argument("--host", required=True)
    st.add_argument("--vnet", type=int, required=True)
    st.add_argument("--ip", required=True, help="address/prefix inside the VNET")
    st.add_argument("--mac")
    st.add_argument("--vcpus", type=int, default=1)
    st.add_argument("--memory", type=int, default=128, help="MiB")
    st.set_defaults(fn=cmd_start)
    sp = vm.add_parser("stop")
    sp.add_argument("name")
    sp.add_argument("--lab", required=True)
    sp.add_argument("--force", action="store_true")
    sp.set_defaults(fn=cmd_stop)
    mg = vm.add_parser("migrate", help="live-migrate a VM to another host")
    mg.add_argument("name")
    mg.add_argument("--lab", required=True)
    mg.add_argument("--to", required=True)
    mg.add_argument("--bandwidth", type=int, default=1000, help="MiB/s (0: libvirt's default)")
    mg.add_argument("--downtime", type=int, default=50, help="maximum downtime, ms")
    mg.add_argument("--timeout", type=float, default=600, help="seconds to follow a migration through the manager")
    mg.set_defaults(fn=cmd_migrate)
