"""`softudc demo` (what `make demo` runs): a 3-host lab, two VNETs that share a subnet, endpoints
pinging across hosts, isolation shown, and an endpoint moved between hosts under a 10 ms ping
(the network side of a live migration; real VMs replace the endpoints in a later release)."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time

from gatekeeper.client import GatekeeperClient
from softudc.lab import Lab, LabSpec, lab_down, lab_up
from softudc.lab.endpoint import add_endpoint, move_endpoint

NAME = "demo"
ENDPOINTS = {
    # name: (host, vnet, address)
    "blue1": ("h1", 10, "10.0.0.1/24"),
    "blue2": ("h2", 10, "10.0.0.2/24"),
    "blue3": ("h3", 10, "10.0.0.3/24"),
    "red1": ("h1", 20, "10.0.0.1/24"),
    "red3": ("h3", 20, "10.0.0.2/24"),
}


def step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _ping(lab: Lab, src: str, ip: str, count: int = 3) -> tuple[bool, str]:
    out = subprocess.run(["ip", "netns", "exec", lab.endpoints[src].netns, "ping", "-n", "-c", str(count),
                          "-i", "0.2", "-W", "1", ip], capture_output=True, text=True)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out.stdout)
    return out.returncode == 0, f"avg {rtt.group(1)} ms" if rtt else "no reply"


def run_demo(state_dir: str | None, keep: bool = True) -> None:
    lab_down(NAME, state_dir)  # idempotent: a previous demo is replaced
    step("lab: 3 hosts (network namespaces) on one underlay segment, a gatekeeper on each")
    lab = lab_up(LabSpec(NAME, hosts=3), state_dir, progress=True)
    for h in lab.hosts:
        print(f"  {h.name}: underlay {h.underlay_ip}, metrics http://{h.mgmt_ip}:9464/metrics (inside {h.netns})")
    step("VNETs 10 (blue) and 20 (red) on every host; both use 10.0.0.0/24")
    for h in lab.hosts:
        for vnet in (10, 20):
            info = GatekeeperClient(h.api_socket).call("vnet.create", vnet=vnet)
    print(f"  transport {info['transport']} (UDP/1798, EtherIP), VNET MTU {info['mtu']} on a 1500-byte underlay")
    step("endpoints (guest namespaces) plugged into the VNETs")
    for name, (host, vnet, ip) in ENDPOINTS.items():
        ep = add_endpoint(lab, name, host, vnet, ip)
        print(f"  {name:6} on {host}  vnet {vnet}  {ip:12}  mac {ep.mac}")
    step("pings across hosts, within each VNET")
    failures = 0
    for src, ip, expect in [("blue1", "10.0.0.2", True), ("blue1", "10.0.0.3", True), ("blue2", "10.0.0.3", True),
                            ("red1", "10.0.0.2", True), ("red1", "10.0.0.3", False)]:
        ok, detail = _ping(lab, src, ip)
        target = next(n for n, (_, v, a) in ENDPOINTS.items()
                      if a.startswith(ip + "/") and v == ENDPOINTS[src][1]) if expect else "(blue3's address)"
        verdict = "reachable" if ok else "unreachable"
        good = ok == expect
        failures += not good
        print(f"  {src:6} -> {ip:9} {target:18} {verdict:11} {detail:14} {'ok' if good else 'UNEXPECTED'}")
    step("moving blue2 from h2 to h3 while blue1 pings it every 10 ms")
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.endpoints["blue1"].netns, "ping", "-n", "-i", "0.01",
                               "-w", "3", "10.0.0.2"], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    t0 = time.monotonic()
    move_endpoint(lab, "blue2", "h3")
    moved_in = time.monotonic() - t0
    out, _ = pinger.communicate(timeout=10)
    seqs = sorted(int(s) for s in re.findall(r"icmp_seq=(\d+) ttl", out))
    gap = max((b - a for a, b in itertools.pairwise(seqs)), default=0) * 10
    print(f"  re-plugged in {moved_in * 1000:.0f} ms; longest ping gap {gap} ms; "
          "h3 sent a gratuitous VARP ANNOUNCE, every host re-learned blue2 at once")
    for h in lab.hosts:
        for e in GatekeeperClient(h.api_socket).call("varp.cache"):
            if e["mac"] == lab.endpoints["blue2"].mac:
                print(f"  {h.name} VARP cache: blue2 ({e['mac']}) at {e['addr']} ({e['state']})")
    step("where everything runs")
    for name, ep in lab.endpoints.items():
        print(f"  {name:6} host {ep.host}  vnet {ep.vnet}  netns {ep.netns}")
    print("\n  try: softudc varp cache --lab demo;  softudc counters --lab demo --host h1")
    print("       ip netns exec sudc-demo-e-blue1 ping 10.0.0.3")
    print("  console: not yet (the manager and its web console come with the manager release)")
    if keep:
        print("  the lab stays up; remove it with: .venv/bin/softudc lab down demo")
    else:
        lab_down(NAME, state_dir)
    if failures:
        print(f"\ndemo: {failures} unexpected result(s)", file=sys.stderr)
        sys.exit(1)
