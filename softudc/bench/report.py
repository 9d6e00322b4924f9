"""Human-readable output of benchmark results."""

from __future__ import annotations

from typing import Any


def print_table(result: dict[str, Any]) -> None:
    cols = [("tcp_mbps", "tcp_mbps", 1), ("tcp_cpu_cores_per_gbps", "cpu/Gbit/s", 3), ("udp64_pps", "udp64_pps", 1),
            ("ping_p50_us", "ping_p50_us", 1), ("ping_p99_us", "ping_p99_us", 1), ("fragments", "fragments", 1)]
    print(f"{'design':12}" + "".join(f"{head:>14}" for _, head, _ in cols))
    for design, row in result["results"].items():  # runs from before the CPU column have none
        print(f"{design:12}" + "".join(f"{row.get(key, float('nan')):>14.{digits}f}" for key, _, digits in cols))
    print()
    for name, value in result["ratios"].items():
        print(f"{name:32} {value:.3f}")
    for line in result.get("notes", []):
        print(line)
