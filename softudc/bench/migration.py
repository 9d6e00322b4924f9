"""`softudc bench migration`: live migrations of an idle guest back and forth between two hosts
while a third pings it every 10 ms, over a VNET and, in the same run, with the guest bridged
straight onto the shared L2 underlay (the baseline: what L2 learning alone achieves).

Per migration: libvirt's total time and downtime, pings lost, and the longest gap between two
replies (from ping's own timestamps). Results are medians; the ratio compares the gaps.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from softudc.lab import Lab, LabSpec, lab_down, lab_up, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import wait_for_page
from softudc.lab.libvirt import migration_uri
from softudc.lab.shell import ip
from softudc.localapi import LocalApiClient

VM_IP, PINGER_IP = "10.0.0.11", "10.0.0.3"


def _plain_l2(lab: Lab) -> str:
    """A bridge `brl2` on h1 and h2 joined to the underlay segment, and a pinger namespace on it."""
    seg = lab.segment_ns(0)
    for h in lab.hosts[:2]:
        # only ul0 answers ARP for the underlay address: else brl2 does too (ARP flux), the peers' frames
        # come in by l2 and miss the eBPF decapsulation attached to ul0 (docs/ebpf.md)
        shell.run(["ip", "netns", "exec", h.netns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"])
        ip("link", "add", "l2", "netns", h.netns, "type", "veth", "peer", "name", f"l2{h.name}", "netns", seg)
        ip("link", "set", f"l2{h.name}", "master", "br0", "up", netns=seg)
        ip("link", "add", "brl2", "type", "bridge", "stp_state", "0", "forward_delay", "0", netns=h.netns)
        ip("link", "set", "l2", "master", "brl2", "up", netns=h.netns)
        ip("link", "set", "brl2", "up", netns=h.netns)
    pinger = f"{lab.prefix}e-pl"
    shell.run(["ip", "netns", "add", pinger])
    ip("link", "add", "eth0", "netns", pinger, "type", "veth", "peer", "name", "l2pinger", "netns", seg)
    ip("link", "set", "l2pinger", "master", "br0", "up", netns=seg)
    ip("addr", "add", f"{PINGER_IP}/24", "dev", "eth0", netns=pinger)
    ip("link", "set", "eth0", "up", netns=pinger)
    return pinger


def _one(lab: Lab, name: str, src: str, dst: str, pinger_ns: str) -> dict[str, float]:
    ping = subprocess.Popen(["ip", "netns", "exec", pinger_ns, "ping", "-n", "-D", "-i", "0.01", VM_IP],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    result = LocalApiClient(lab.host(src).api_socket, timeout=300).call(
        "vm.migrate", name=name, dest_uri=migration_uri(lab.host(dst)), bandwidth_mib=1000, downtime_ms=50)
    job = LocalApiClient(lab.host(dst).api_socket).call("vm.completed_job", name=name)
    time.sleep(1.5)
    ping.send_signal(signal.SIGINT)
    out, _ = ping.communicate(timeout=10)
    stamps = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\].*icmp_seq=\d+ ttl", out, re.M)]
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))  # type: ignore[union-attr]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"total_ms": float(job.get("total_ms") or result["wall_ms"]),
            "downtime_ms": float(job.get("downtime_ms") or 0), "lost_pings": float(sent - len(stamps)),
            "longest_gap_ms": round(max(gaps, default=0) * 1000, 1), "wall_ms": float(result["wall_ms"])}


def run_migration(runs: int = 10, state_dir: str | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("softudc bench migration needs root (it builds network namespaces)")
    state = state_dir or tempfile.mkdtemp(prefix="sudcb")
    lab = lab_up(LabSpec("m" + secrets.token_hex(3), hosts=3, vms=True), state)
    try:
        for h in lab.hosts:
            LocalApiClient(h.api_socket).call("vnet.create", vnet=10)
        add_endpoint(lab, "p", "h3", 10, f"{PINGER_IP}/24")
        plain_pinger = _plain_l2(lab)
        per: dict[str, list[dict[str, float]]] = {"vnet": [], "plain_l2": []}
        for mode in ("vnet", "plain_l2"):
            name = f"mig{mode.replace('_', '')}"
            nic: dict[str, Any] = {"vnet": 10, "mac": "52:54:00:00:aa:01", "ip": f"{VM_IP}/24"}
            if mode == "plain_l2":
                nic = {"bridge": "brl2", "mac": "52:54:00:00:bb:01", "ip": f"{VM_IP}/24", "mtu": 1500}
            LocalApiClient(lab.host("h1").api_socket, timeout=60).call("vm.start", name=name, nics=[nic])
            pinger = lab.endpoints["p"].netns if mode == "vnet" else plain_pinger
            wait_for_page(pinger, f"http://{VM_IP}/counter")
            where = "h1"
            for i in range(runs):
                dst = "h2" if where == "h1" else "h1"
                r = _one(lab, name, where, dst, pinger)
                per[mode].append(r)
                print(f"[{mode} {i + 1}/{runs}] {where} -> {dst}: total {r['total_ms']:.0f} ms, downtime "
                      f"{r['downtime_ms']:.0f} ms, lost {r['lost_pings']:.0f}, "
                      f"longest gap {r['longest_gap_ms']:.0f} ms", file=sys.stderr, flush=True)
                where = dst
            LocalApiClient(lab.host(where).api_socket, timeout=60).call("vm.stop", name=name, force=True)
        med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in per.items()}
        ratio = statistics.median(v["longest_gap_ms"] / max(p["longest_gap_ms"], 1.0)
                                  for v, p in zip(per["vnet"], per["plain_l2"], strict=True))
        return {"benchmark": "migration", "runs": runs, "accel": lab.accel, "vnet": med["vnet"],
                "plain_l2": med["plain_l2"], "ratios": {"gap_vnet_vs_plain": ratio,
                                                       "gap_vnet_minus_plain_ms": med["vnet"]["longest_gap_ms"]
                                                       - med["plain_l2"]["longest_gap_ms"]},
                "per_run": per}
    finally:
        lab_down(lab.spec.name, state)
