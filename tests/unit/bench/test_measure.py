"""The machine's busy CPU time from /proc/stat, which `softudc bench dataplane` divides by the TCP
throughput (cores per Gbit/s)."""

from __future__ import annotations

import pytest

from softudc.bench.measure import cpu_busy_seconds

STAT = """cpu  1000 20 300 90000 50 7 80 3 0 0
cpu0 500 10 150 45000 25 4 40 2 0 0
intr 12345
"""


def test_busy_time_counts_user_nice_system_irq_softirq_steal_but_not_idle_or_iowait() -> None:
    assert cpu_busy_seconds(STAT) == pytest.approx((1000 + 20 + 300 + 7 + 80 + 3) / 100)


def test_a_stat_without_the_aggregate_line_is_refused() -> None:
    with pytest.raises(ValueError, match="no aggregate 'cpu' line"):
        cpu_busy_seconds("cpu0 1 2 3 4 5 6 7 8\n")


def test_the_real_stat_of_this_machine_parses() -> None:
    with open("/proc/stat") as f:
        assert cpu_busy_seconds(f.read()) > 0
