"""`softudc bench console` on a small inventory: every page answers and is timed, the JSON has the
issue's shape (the browser half is left out here: it needs Chromium, and runs in the bench)."""

from __future__ import annotations

from pathlib import Path

import pytest

import softudc.bench.console as bench


def test_small_inventory_every_page_timed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bench, "HOSTS", 4)
    monkeypatch.setattr(bench, "FARMS", 2)
    monkeypatch.setattr(bench, "VMS_PER_FARM", 6)
    monkeypatch.setattr(bench, "CHROMIUM", str(tmp_path / "no-chromium"))
    r = bench.run_console(requests=3, events=1)
    assert r["inventory"] == {**r["inventory"], "hosts": 4, "farms": 2, "vms": 12}
    assert set(r["pages"]) == set(bench.PAGES)
    for name, fig in r["pages"].items():
        assert 0 < fig["p50_ms"] <= fig["p99_ms"], name
        assert fig["kib"] >= 0
    assert "skipped" in r["event_to_browser_ms"]
    assert r["targets"]["events_met"] is False  # not measured is not met


def test_quantiles() -> None:
    q = bench._quantiles([float(x) for x in range(1, 101)])
    assert q["p50_ms"] == 50.5 and 99 <= q["p99_ms"] <= 100
    assert bench._quantiles([7.0]) == {"p50_ms": 7.0, "p99_ms": 7.0}


def test_descriptor_has_the_farm_size_and_no_spread() -> None:
    text = bench._descriptor("f3")
    assert "name: f3" in text and f"replicas: {bench.VMS_PER_FARM - 1}" in text
    assert "placementGroup: web-spread" not in text
