"""Migration and VM metrics: one count per ended attempt, read from the events the controller
really writes; histograms with the figures its message carries; VMs per host by state; running
totals that neither double-count nor drop when events go; promtool accepts the output."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from softudc.manager import controller, migration
from softudc.manager.migmetrics import WINDOW, MigrationCollector, MigrationTotals, outcome, vms_by_state
from softudc.manager.store import SqliteStore

MOVING = {"to": "h2", "since": 100.0, "error": "operation failed: bang", "attempt": "a1"}
REPORTS = {"h2": {"arrivals": {"f--web-0": {"downtime_ms": 42, "total_ms": 900}}}}


def said(before: str, after: str) -> list[tuple[str, str]]:
    """The farm's events the controller writes for one step of a live move."""
    job = {"wall_ms": 800}
    return controller._said("web-0", "f--web-0", "h1", MOVING, migration.Transition(before, "x", after),
                            job, REPORTS, True, 103.5)


def test_a_completed_live_move_gives_its_downtime_and_duration() -> None:
    [(type_, message)] = said("copying", "done")
    end = outcome({"type": type_, "message": message})
    assert end is not None
    assert (end.result, end.reason, end.downtime_s, end.duration_s) == ("completed", "none", 0.042, 3.5)


@pytest.mark.parametrize(("before", "reason"), [("silent", "source_silent"), ("stalled", "destination_unprepared"),
                                                ("unknown", "outcome_unknown"), ("completed", "not_arrived"),
                                                ("failed", "job_failed")])
def test_a_failed_attempt_counts_once_when_it_ends_with_its_reason(before: str, reason: str) -> None:
    waiting = [outcome({"type": t, "message": m}) for t, m in said("copying", before)]
    assert waiting in ([], [None])  # "stays 'migrating'": not the end of the attempt
    [(type_, message)] = said(before, "aborted")
    end = outcome({"type": type_, "message": message})
    assert end is not None and (end.result, end.reason) == ("failed", reason)


def test_cold_moves_and_cancellations() -> None:
    inst = {"name": "web-0", "host": "h1", "migrating": {**migration.begin("h2", "a", 0.0, None)}}
    events: list[tuple[str, str]] = []
    controller._observe_cold(inst, "f--web-0", ["h1"], {"h1": {"reported": 400.0, "running": ["f--web-0"]}},
                             400.0, events)
    assert [t for t, _ in events] == ["MigrationFailed"]
    end = outcome({"type": events[0][0], "message": events[0][1]})
    assert end is not None and (end.result, end.reason) == ("failed", "cold_timeout")
    gone = outcome({"type": "MigrationCancelled", "message": "by admin: web-0 stays on h1 (was moving to h2)"})
    assert gone is not None and (gone.result, gone.reason) == ("cancelled", "admin")
    assert outcome({"type": "Planned", "message": "+1 -0 =0"}) is None


def event(at: float, type_: str = "Migrated", message: str = "w: h1 -> h2 live, downtime 5 ms, 2.0 s after the "
          "request", name: str = "f") -> dict[str, Any]:
    return {"time": at, "kind": "farm", "name": name, "type": type_, "message": message}


def test_totals_count_each_event_once_and_keep_counts_when_events_go() -> None:
    t = MigrationTotals()
    first = [event(1.0), event(2.0, name="g"), event(2.0, "MigrationCancelled", "by a: w stays on h1")]
    t.add(first)
    t.add(first)  # the same events read again
    assert t.results == {("completed", "none"): 2, ("cancelled", "admin"): 1}
    t.add([event(3.0)])  # the older events dropped (retention, farm deleted): the counts stay
    assert t.results[("completed", "none")] == 3
    assert t.downtime.counts[DOWNTIME_5MS] == 3 and t.duration.total == 6.0
    late = MigrationTotals(since=2.0)  # a manager started at 2.0: the history before is not counted again
    late.add([*first, event(3.0)])
    assert late.results == {("completed", "none"): 2, ("cancelled", "admin"): 1}


def test_a_collector_counts_from_its_start_by_default(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.put_event("farm", "f", "MigrationCancelled", "by a: w stays on h1", time.time() - 60)
    collector = MigrationCollector(store, dict)
    store.event("farm", "f", "MigrationCancelled", "by a: v stays on h1")
    list(collector.collect())
    assert collector.totals.results == {("cancelled", "admin"): 1}


DOWNTIME_5MS = 2  # index of the 0.005 bucket


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["Migrated", "Planned", "MigrationCancelled"]),
                          st.sampled_from(["f", "g"])), max_size=30), st.integers(0, 30))
def test_reading_overlapping_windows_counts_what_one_read_counts(raw: list[tuple[int, str, str]], cut: int) -> None:
    events = [event(float(at), t, f"{t} {i}", name) for i, (at, t, name) in enumerate(sorted(raw))]
    once, windows = MigrationTotals(), MigrationTotals()
    once.add(events)
    windows.add(events[:cut])
    windows.add(events[max(0, cut - 3):])  # a later read overlaps the earlier one
    assert windows.results == once.results


def test_vms_by_state_from_a_report() -> None:
    report = {"running": ["a", "b", "c"], "prepared": ["d", "a"], "sizes": {"a": [1, 1], "e": [1, 1], "d": [1, 1]},
              "migrations": {"b": {"state": "copying"}, "c": {"state": "completed"}}}
    assert vms_by_state(report) == {"running": 2, "migrating": 1, "incoming": 1, "stopped": 1}
    assert vms_by_state({}) == {"running": 0, "migrating": 0, "incoming": 0, "stopped": 0}


def collected(tmp_path: Path) -> bytes:
    store = SqliteStore(tmp_path / "s.db")
    store.put_event("farm", "f", "Migrated", "w: h1 -> h2 live, copied in 800 ms, downtime 42 ms, 3.5 s after "
                    "the request", 10.0)
    store.put_event("farm", "f", "MigrationFailed", "w: h1 -> h2: bang; h2 holds no copy, so it keeps running on h1",
                    11.0)
    reports = {"h1": {"state": "ready", "running": ["x"]}, "h2": {"state": "down", "running": ["y"]}}
    registry = CollectorRegistry()
    store.put_event("farm", "f", "Migrated", "w: h1 -> h2 live, downtime 1 ms", 9.0)  # before the collector began
    registry.register(MigrationCollector(store, lambda: reports, since=10.0))
    return generate_latest(registry)


def test_the_collector_exports_counts_histograms_and_vms(tmp_path: Path) -> None:
    text = collected(tmp_path).decode()
    assert 'softudc_migrations_total{reason="none",result="completed"} 1.0' in text
    assert 'softudc_migrations_total{reason="job_failed",result="failed"} 1.0' in text
    assert 'softudc_migration_downtime_seconds_bucket{le="0.05"} 1.0' in text
    assert 'softudc_migration_downtime_seconds_bucket{le="0.025"} 0.0' in text
    assert "softudc_migration_duration_seconds_sum 3.5" in text
    assert 'softudc_vms{host="h1",state="running"} 1.0' in text
    assert 'softudc_vms{host="h2",state="running"} 0.0' in text  # down: its old report says nothing now


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make bootstrap)")
def test_promtool_accepts_the_output(tmp_path: Path) -> None:
    out = subprocess.run(["promtool", "check", "metrics"], input=collected(tmp_path), capture_output=True)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


def test_a_scrape_reads_more_than_its_window_when_all_of_it_is_new(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    collector = MigrationCollector(store, dict, since=0.0)
    store.load_events([event(1.0 + i / 1000, "MigrationCancelled", f"by a: w{i} stays on h1")
                       for i in range(WINDOW + 50)])
    list(collector.collect())
    assert collector.totals.results == {("cancelled", "admin"): WINDOW + 50}
    store.put_event("farm", "f", "Migrated", "w: h1 -> h2 live, downtime 5 ms", 5.0)
    list(collector.collect())  # the window holds what was counted before: it is enough
    assert collector.totals.results == {("cancelled", "admin"): WINDOW + 50, ("completed", "none"): 1}
