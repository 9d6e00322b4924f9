"""Traffic generators and counters for benchmarks: ping, iperf3, /proc/net/snmp, all run inside
namespaces the benchmark made."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from softudc.lab import shell


def ns_exec(netns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout)


def wait_reachable(netns: str, ip: str, size: int, timeout: float = 10.0) -> None:
    """Wait until a full-size DF ping gets through (ARP, VARP and tunnels settled)."""
    deadline = time.monotonic() + timeout
    while True:
        out = ns_exec(netns, "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", str(size), ip)
        if out.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ip} not reachable from {netns} with {size}-byte DF pings: {out.stdout}{out.stderr}")
        time.sleep(0.2)


def ping_percentiles(netns: str, ip: str, count: int = 200, interval: float = 0.01) -> tuple[float, float]:
    out = ns_exec(netns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", ip)
    rtts = sorted(float(t) * 1000 for t in re.findall(r"time=([\d.]+) ms", out.stdout))
    if not rtts:
        raise RuntimeError(f"ping {ip} from {netns} got no replies: {out.stdout}{out.stderr}")
    p99 = rtts[min(len(rtts) - 1, round(0.99 * (len(rtts) - 1)))]
    return statistics.median(rtts), p99


@dataclass
class IperfServer:
    netns: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, netns: str, port: int = 5201) -> IperfServer:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, "iperf3", "-s", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        return cls(netns, proc)

    def stop(self) -> None:
        shell.stop_pid(self.proc.pid)


def cpu_busy_seconds(stat: str) -> float:
    """CPU time the whole machine spent busy (user, nice, system, irq, softirq, steal; not idle or
    iowait), summed over its CPUs, from the text of /proc/stat; USER_HZ is 100 on Linux."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
            return (user + nice + system + irq + softirq + steal) / 100.0
    raise ValueError("/proc/stat has no aggregate 'cpu' line")


def _cpu_now() -> float:
    with open("/proc/stat") as f:
        return cpu_busy_seconds(f.read())


def iperf_tcp_with_cpu(netns: str, ip: str, seconds: float) -> tuple[float, float]:
    """(Mbit/s, CPU cores busy per Gbit/s): the machine's busy CPU over the iperf3 run (both ends,
    the data path, the kernel's softirqs; and whatever else runs, so compare designs of one run)
    divided by the throughput."""
    t0, c0 = time.monotonic(), _cpu_now()
    mbps = iperf_tcp_mbps(netns, ip, seconds)
    cores = (_cpu_now() - c0) / max(time.monotonic() - t0, 1e-3)
    return mbps, (cores / (mbps / 1000.0) if mbps > 0 else float("nan"))


def iperf_tcp_mbps(netns: str, ip: str, seconds: float) -> float:
    data = _iperf(netns, ip, ["-t", str(seconds), "-O", "1"], seconds)
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6


def iperf_udp_pps(netns: str, ip: str, seconds: float, length: int = 64) -> float:
    """Delivered packets per second at an unlimited offered rate."""
    data = _iperf(netns, ip, ["-u", "-b", "0", "-l", str(length), "-t", str(seconds)], seconds)
    s = data["end"]["sum"]
    return (int(s["packets"]) - int(s["lost_packets"])) / float(s["seconds"])


def _iperf(netns: str, ip: str, args: list[str], seconds: float) -> dict[str, Any]:
    out = ns_exec(netns, "iperf3", "-c", ip, "-J", *args, timeout=seconds + 30)
    try:
        data: dict[str, Any] = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 to {ip} from {netns} failed: {out.stderr or out.stdout[:300]}") from None
    if "error" in data:
        raise RuntimeError(f"iperf3 to {ip} from {netns}: {data['error']}")
    return data


def frag_creates(netns: str) -> int:
    """IPv4 fragments this namespace has created (the outer packets of a tunnel)."""
    lines = [line.split() for line in ns_exec(netns, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Ip:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["FragCreates"])
