"""Human-readable output of benchmark results."""

from __future__ import annotations

from typing import Any


def print_table(result: dict[str, Any]) -> None:
    cols = ["tcp_mbps", "udp64_pps", "ping_p50_us", "ping_p99_us", "fragments"]
    print(f"{'design':12}" + "".join(f"{c:>14}" for c in cols))
    for design, row in result["results"].items():
        print(f"{design:12}" + "".join(f"{row[c]:>14.1f}" for c in cols))
    print()
    for name, value in result["ratios"].items():
        print(f"{name:32} {value:.3f}")
    for line in result.get("notes", []):
        print(line)
