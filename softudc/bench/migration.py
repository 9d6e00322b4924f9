"""`softudc bench migration`: live migrations of an idle guest back and forth between two hosts
while a third pings it every 10 ms, over a VNET and, in the same run, with the guest bridged
straight onto the shared L2 underlay (the baseline: what L2 learning alone achieves).

Per migration: libvirt's total time and downtime, pings lost, the longest gap between two
replies (from ping's own timestamps), the gap beyond libvirt's downtime (downtimes vary widely
between runs on a loaded machine; what the network adds is the rest), and where the gap goes
(migration_trace.py: a capture of the underlay segment, and the destination gatekeeper's log line
for the domain's resume event). Results are medians; the ratio compares the gaps.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from softudc.bench import migration_trace as trace
from softudc.lab import Lab, LabSpec, lab_down, lab_up, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import wait_for_page
from softudc.lab.libvirt import migration_uri
from softudc.lab.shell import ip
from softudc.localapi import LocalApiClient

VM_IP, PINGER_IP = "10.0.0.11", "10.0.0.3"
NAMES = {"vnet": "migvnet", "plain_l2": "migplainl2"}
MACS = {"vnet": "52:54:00:00:aa:01", "plain_l2": "52:54:00:00:bb:01"}


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
    start, end = longest_gap(stamps)
    downtime = float(job.get("downtime_ms") or 0)
    gap_ms = round((end - start) * 1000, 1)
    return {"total_ms": float(job.get("total_ms") or result["wall_ms"]),
            "downtime_ms": downtime, "lost_pings": float(sent - len(stamps)),
            "longest_gap_ms": gap_ms, "beyond_downtime_ms": round(gap_ms - downtime, 1),
            "wall_ms": float(result["wall_ms"]), "gap_start": start, "gap_end": end}


def longest_gap(stamps: list[float]) -> tuple[float, float]:
    """The two reply stamps around the longest gap between replies; (0, 0) with fewer than two."""
    pairs = list(itertools.pairwise(stamps))
    return max(pairs, key=lambda p: p[1] - p[0], default=(0.0, 0.0))


def resume_logged(log_path: str, name: str) -> list[float]:
    """When the gatekeeper's hypervisor driver logged `name` arriving by migration (its libvirt
    RESUMED/STARTED event): times since the epoch (the log's local time, millisecond precision)."""
    out = []
    pattern = re.compile(rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}) \S+ INFO {re.escape(name)} migrated here")
    for line in Path(log_path).read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if m:
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def _explain(lab: Lab, per: dict[str, list[dict[str, Any]]], capture: Path | None, names: dict[str, str],
             macs: dict[str, str], dests: dict[str, list[str]]) -> None:
    """Add each run's timeline (migration_trace.timeline, and `resume_event_ms`: the destination
    gatekeeper's log of the resume event) to its figures, in place."""
    for mode, runs in per.items():
        mode_events = trace.events(capture, macs[mode], VM_IP) if capture is not None else []
        for r, dst in zip(runs, dests[mode], strict=True):
            new_host = lab.host(dst).underlay_ip if mode == "vnet" else None
            if capture is not None:
                r.update(trace.timeline(mode_events, r["gap_start"], r["gap_end"], new_host))
            resumed = [t for t in resume_logged(lab.host(dst).log_path, names[mode])
                       if r["gap_start"] - 5 < t < r["gap_end"] + 5]
            r["resume_event_ms"] = round((resumed[0] - r["gap_start"]) * 1000, 1) if resumed else None


def _medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each figure's median over the runs that have it; `gaps_at_switchover` counts the runs whose
    longest gap was the switchover's (their timelines explain it)."""
    out: dict[str, float | None] = {}
    keys = dict.fromkeys(k for r in runs for k in r if k not in ("gap_start", "gap_end", "gap_at_switchover"))
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["gaps_at_switchover"] = float(sum(1 for r in runs if r.get("gap_at_switchover")))
    return out


def _mode(lab: Lab, mode: str, runs: int, pinger: str) -> tuple[list[dict[str, Any]], list[str]]:
    """`runs` migrations of the mode's VM back and forth between h1 and h2: figures, destinations."""
    name = NAMES[mode]
    nic: dict[str, Any] = {"vnet": 10, "mac": MACS[mode], "ip": f"{VM_IP}/24"}
    if mode == "plain_l2":
        nic = {"bridge": "brl2", "mac": MACS[mode], "ip": f"{VM_IP}/24", "mtu": 1500}
    LocalApiClient(lab.host("h1").api_socket, timeout=60).call("vm.start", name=name, nics=[nic])
    wait_for_page(pinger, f"http://{VM_IP}/counter")
    where = "h1"
    out: list[dict[str, Any]] = []
    dests: list[str] = []
    for i in range(runs):
        dst = "h2" if where == "h1" else "h1"
        r = _one(lab, name, where, dst, pinger)
        out.append(r)
        dests.append(dst)
        print(f"[{mode} {i + 1}/{runs}] {where} -> {dst}: total {r['total_ms']:.0f} ms, downtime "
              f"{r['downtime_ms']:.0f} ms, lost {r['lost_pings']:.0f}, "
              f"longest gap {r['longest_gap_ms']:.0f} ms", file=sys.stderr, flush=True)
        where = dst
    LocalApiClient(lab.host(where).api_socket, timeout=60).call("vm.stop", name=name, force=True)
    return out, dests


def run_migration(runs: int = 10, state_dir: str | None = None, flood: str = "multicast") -> dict[str, Any]:
    """`flood`: the lab's VARP flooding, "multicast" or "members" (head-end unicast copies)."""
    if os.geteuid() != 0:
        raise RuntimeError("softudc bench migration needs root (it builds network namespaces)")
    state = state_dir or tempfile.mkdtemp(prefix="sudcb")
    lab = lab_up(LabSpec("m" + secrets.token_hex(3), hosts=3, vms=True, flood=flood), state)
    capture: trace.Capture | None = None
    try:
        for h in lab.hosts:
            LocalApiClient(h.api_socket).call("vnet.create", vnet=10)
        add_endpoint(lab, "p", "h3", 10, f"{PINGER_IP}/24")
        plain_pinger = _plain_l2(lab)
        try:
            capture = trace.Capture(lab.segment_ns(0), Path(state) / "segment.pcap")
        except (OSError, trace.TraceError) as e:
            print(f"no capture of the segment, no timelines: {e}", file=sys.stderr)
        per: dict[str, list[dict[str, Any]]] = {}
        dests: dict[str, list[str]] = {}
        for mode in ("vnet", "plain_l2"):
            pinger = lab.endpoints["p"].netns if mode == "vnet" else plain_pinger
            per[mode], dests[mode] = _mode(lab, mode, runs, pinger)
        pcap = None
        if capture is not None:
            capture.stop()
            pcap = capture.path
        try:
            _explain(lab, per, pcap, NAMES, MACS, dests)
            if pcap is not None:
                print(f"the segment's capture stays in {pcap} (tshark reads it; remove it when done)", file=sys.stderr)
        except (OSError, trace.TraceError) as e:
            print(f"no timelines: {e}", file=sys.stderr)
        return {**summarize(per, runs, lab.accel), "flood": flood, "datapath": _datapaths(lab)}
    except BaseException:
        kept = keep_logs(lab.dir, Path(state) / "logs")
        print(f"bench migration failed; the lab's logs are in {kept} (gatekeeper.log, libvirt's qemu/*.log)",
              file=sys.stderr)
        raise
    finally:
        if capture is not None:
            capture.stop()
        lab_down(lab.spec.name, state)


def _datapaths(lab: Lab) -> dict[str, str]:
    """Which data path VNET 10 ran on each host (the `counters` call's ebpf view)."""
    out = {}
    for h in lab.hosts:
        status = LocalApiClient(h.api_socket).call("counters")["ebpf"]
        out[h.name] = next((v["path"] for v in status["vnets"] if v["vnet"] == 10), "userspace")
    return out


def keep_logs(lab_dir: Path, into: Path) -> Path:
    """Copy the lab's logs (gatekeepers, libvirtds, QEMUs) out of its state, which lab_down deletes."""
    for f in lab_dir.rglob("*"):
        if f.is_file() and (f.suffix in (".log", ".stdout") or f.name.endswith(".log.1")):
            dest = into / f.relative_to(lab_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    return into


def summarize(per: dict[str, list[dict[str, Any]]], runs: int, accel: str) -> dict[str, Any]:
    """Medians per mode, and the VNET-vs-plain-L2 comparisons: of the gaps (paired run by run for
    the ratio), and of the gaps beyond libvirt's downtime (which varies more than the network)."""
    med = {m: _medians(rs) for m, rs in per.items()}
    ratio = statistics.median(v["longest_gap_ms"] / max(p["longest_gap_ms"], 1.0)
                              for v, p in zip(per["vnet"], per["plain_l2"], strict=True))
    vnet, plain = med["vnet"], med["plain_l2"]
    assert vnet["longest_gap_ms"] is not None and plain["longest_gap_ms"] is not None
    assert vnet["beyond_downtime_ms"] is not None and plain["beyond_downtime_ms"] is not None
    return {"benchmark": "migration", "runs": runs, "accel": accel, "vnet": vnet, "plain_l2": plain,
            "ratios": {"gap_vnet_vs_plain": ratio,
                       "gap_vnet_minus_plain_ms": round(vnet["longest_gap_ms"] - plain["longest_gap_ms"], 1),
                       "beyond_downtime_vnet_minus_plain_ms":
                           round(vnet["beyond_downtime_ms"] - plain["beyond_downtime_ms"], 1)},
            "per_run": per}
