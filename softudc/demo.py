"""`softudc demo` (what `make demo` runs): a 3-host lab with a libvirtd and a gatekeeper per host,
two VNETs that share one subnet (red secured with ESP), real QEMU guests on both talking across
hosts, and a live migration under a 10 ms ping. The lab stays up for you to explore."""

from __future__ import annotations

import itertools
import re
import secrets
import subprocess
import sys
import time
from typing import Any

from gatekeeper.client import GatekeeperClient
from softudc.lab import Lab, LabSpec, lab_down, lab_up
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get, wait_for_page
from softudc.lab.libvirt import migration_uri

NAME = "demo"
# name: (host, vnet, address, the addresses it probes)
VMS = {
    "blue-a": ("h1", 10, "10.0.0.11", ["10.0.0.12"]),
    "blue-b": ("h2", 10, "10.0.0.12", ["10.0.0.11"]),
    "red-a": ("h3", 20, "10.0.0.12", ["10.0.0.11"]),
    "red-b": ("h1", 20, "10.0.0.11", ["10.0.0.12"]),
}
MACS = {"blue-a": "52:54:00:0a:00:0a", "blue-b": "52:54:00:0a:00:0b", "red-a": "52:54:00:14:00:0a",
        "red-b": "52:54:00:14:00:0b"}


def step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_demo(state_dir: str | None, keep: bool = True) -> None:
    lab_down(NAME, state_dir)  # idempotent: a previous demo is replaced
    t0 = time.monotonic()
    step("lab: 3 hosts (network namespaces), each with its own libvirtd and gatekeeper")
    lab = lab_up(LabSpec(NAME, hosts=3, vms=True), state_dir, progress=True)
    gk = {h.name: GatekeeperClient(h.api_socket, timeout=300) for h in lab.hosts}
    step("VNETs: 10 (blue, plain) and 20 (red, ESP AES-GCM); both use 10.0.0.0/24")
    red_keys = {"send_epoch": 1, "secrets": {"1": secrets.token_hex(32)}}
    for c in gk.values():
        blue = c.call("vnet.create", vnet=10)
        red = c.call("vnet.create", vnet=20, security="conf", keys=red_keys)
    print(f"  blue: UDP/1798, MTU {blue['mtu']}   red: ESP on UDP/4500 (spi {red['spi']}), MTU {red['mtu']}")
    step(f"VMs (QEMU, {'KVM' if lab.accel == 'kvm' else 'TCG'}, direct kernel boot) plugged into the VNETs")
    for name, (host, vnet, ip, probe) in VMS.items():
        gk[host].call("vm.start", name=name, nics=[{"vnet": vnet, "mac": MACS[name], "ip": f"{ip}/24",
                                                    "probe": probe}])
        print(f"  {name:7} on {host}  vnet {vnet}  {ip}")
    # An admin's window into each VNET: a namespace plugged into it, to read the guests' pages.
    add_endpoint(lab, "adminb", "h3", 10, "10.0.0.2/24")
    add_endpoint(lab, "adminr", "h2", 20, "10.0.0.2/24")
    admin = {10: lab.endpoints["adminb"].netns, 20: lab.endpoints["adminr"].netns}
    step("guests talk to each other across hosts (each pings its peer and fetches its page)")
    failures = 0
    for name, (host, vnet, ip, probe) in VMS.items():
        peer = next(n for n, v in VMS.items() if v[1] == vnet and v[2] == probe[0])
        try:
            report = wait_for_page(admin[vnet], f"http://{ip}/probe", f"ping=ok http={peer}", timeout=120)
            print(f"  {name:7} ({host}) -> {probe[0]}: {report}")
        except TimeoutError as e:
            failures += 1
            print(f"  {name:7} ({host}) -> {probe[0]}: FAILED ({e})")
    step("isolation: 10.0.0.12 is blue-b on VNET 10 and red-a on VNET 20")
    for vnet in (10, 20):
        print(f"  from VNET {vnet}: http://10.0.0.12/ is {http_get(admin[vnet], 'http://10.0.0.12/index.html')!r}")
    failures += _migrate(lab, gk, admin[10])
    step("where everything runs")
    for host, c in gk.items():
        for vm in c.call("vm.list"):
            print(f"  {vm['name']:7} {host}  {vm['state']}")
    h1 = lab.host("h1")
    print(f"\n  ready in {time.monotonic() - t0:.0f} s. Try:")
    print("    .venv/bin/softudc vm list --lab demo")
    print("    .venv/bin/softudc vm migrate blue-a --lab demo --to h2")
    print("    .venv/bin/softudc varp cache --lab demo --host h1")
    print(f"    ip netns exec {lab.mgmt_ns} curl -s http://{h1.mgmt_ip}:9464/metrics | grep softudc_vnet")
    print("  console: comes with the manager (not in this release)")
    if keep:
        print("  the lab stays up; remove it with: .venv/bin/softudc lab down demo")
    else:
        lab_down(NAME, state_dir)
    if failures:
        print(f"\ndemo: {failures} step(s) failed", file=sys.stderr)
        sys.exit(1)


def _migrate(lab: Lab, gk: dict[str, GatekeeperClient], admin_ns: str) -> int:
    step("live migration: blue-b h2 -> h3 while the admin pings it every 10 ms")
    before = http_get(admin_ns, "http://10.0.0.12/counter")
    pinger = subprocess.Popen(["ip", "netns", "exec", admin_ns, "ping", "-n", "-D", "-i", "0.01", "10.0.0.12"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    try:
        result: dict[str, Any] = gk["h2"].call("vm.migrate", name="blue-b", dest_uri=migration_uri(lab.host("h3")),
                                               bandwidth_mib=1000, downtime_ms=50)
    except Exception as e:
        pinger.kill()
        print(f"  FAILED: {e}")
        return 1
    job = gk["h3"].call("vm.completed_job", name="blue-b")
    time.sleep(1)
    pinger.send_signal(2)
    out, _ = pinger.communicate(timeout=10)
    stamps = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\].*icmp_seq", out, re.M)]
    gap = max((b - a for a, b in itertools.pairwise(stamps)), default=0) * 1000
    after = http_get(admin_ns, "http://10.0.0.12/counter")
    print(f"  migrated in {result['wall_ms']} ms, downtime {job['downtime_ms']} ms, longest ping gap {gap:.0f} ms")
    print(f"  the guest's uptime counter went {before} -> {after}: the same guest, still running")
    cache = [e for e in gk["h1"].call("varp.cache") if e["mac"] == MACS["blue-b"]]
    if cache:
        print(f"  h1's VARP cache: blue-b is at {cache[0]['addr']} (h3) - learned from h3's gratuitous ANNOUNCE")
    return 0
