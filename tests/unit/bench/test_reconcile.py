"""The reconcile benchmark's measuring step runs against a real Manager and store (the timings
themselves are the benchmark's business, never asserted here)."""

from __future__ import annotations

from softudc.bench.reconcile import _one


def test_one_measures_both_kinds_of_report() -> None:
    r = _one(farms=2, reports=2)
    assert set(r) == {"changed_ms", "unchanged_ms"}
    assert all(v > 0 for v in r.values())
