"""Human-readable output of benchmark results."""

from __future__ import annotations

from typing import Any


def print_table(result: dict[str, Any]) -> None:
    cols = ["tcp_mbps", "tcp_cpu_cores_per_gbps", "udp64_pps", "ping_p50_us", "ping_p99_us", "fragments"]
    print(f"{'design':12}" + "".join(f"{c.replace('tcp_cpu_cores_per_gbps', 'cpu/Gbit/s'):>14}" for c in cols))
    for design, row in result["results"].items():  # runs from before the CPU column have none
        print(f"{design:12}" + "".join(f"{row.get(c, float('nan')):>14.{3 if 'cpu' in c else 1}f}" for c in cols))
    print()
    for name, value in result["ratios"].items():
        print(f"{name:32} {value:.3f}")
    for line in result.get("notes", []):
        print(line)
