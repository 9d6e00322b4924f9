"""Migration and VM metrics of the manager, derived from what the store and the reports hold.

`softudc_migrations_total{result, reason}` and the duration and downtime histograms are derived
from the farms' stored events, not counted where a migration ends: the controller records an
outcome before it stores the farm's status, so a leader deposed between the two leaves the next
leader to record it again, and every manager of a group reads the same store. Reading the events
makes every manager serve the same figures (the rules take the `max` of manager series). A
migration attempt ends with exactly one of these events:

  - `Migrated` (result `completed`): the message carries the downtime and the time since the
    request (live moves; a cold move carries neither);
  - `MigrationFailed` saying the move is over (result `failed`): the destination holds no copy, or
    a cold move was given up. A `MigrationFailed` saying it "stays 'migrating'" is no end: the
    attempt ends later with one of these;
  - `MigrationCancelled` (result `cancelled`, reason `admin`).

The collector keeps running totals from its start, like any process counter: each scrape adds
the events newer than the last it counted (at most SCAN_LIMIT per scrape) and written since the
collector began, so a farm's deletion or the events' retention never lowers a counter, and a
restarted manager starts again from zero rather than counting the history again (which
`increase()` would take for new failures). Each manager of a group counts the outcomes since its
own start: the rules take the `max`.

`softudc_vms{host, state}`: per host, its VMs by state as its latest report says (running,
migrating out, incoming (prepared), stopped (defined, not running)); a host the manager counts
down has none."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from softudc.manager.store import Store

WINDOW = 200  # farm events a scrape reads first: when they are all new, it reads up to SCAN_LIMIT
SCAN_LIMIT = 5000  # farm events read per scrape at most: more between two scrapes are not all counted
DOWNTIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
RESULTS = ("completed", "failed", "cancelled")
# The reasons a failed attempt ends for (bounded: an error text never becomes a label value).
REASONS = ("source_silent", "destination_unprepared", "outcome_unknown", "not_arrived", "job_failed",
           "cold_timeout")
VM_STATES = ("running", "migrating", "incoming", "stopped")
_UNDER_WAY = frozenset({"starting", "copying", "recovered"})  # a source's job that has not ended

_DOWNTIME = re.compile(r"downtime ([0-9.]+) ms")
_TOOK = re.compile(r", ([0-9.]+) s after the request")
_COPIED = re.compile(r"copied in ([0-9.]+) ms")
_FAILED_ENDED = re.compile(r"holds no copy, so it|cold move .* given up after")
_FAIL_REASONS = (("never started the migration", "source_silent"), ("never prepared for it", "destination_unprepared"),
                 ("outcome unknown", "outcome_unknown"), ("says it completed, but", "not_arrived"),
                 ("given up after", "cold_timeout"))


@dataclass(frozen=True)
class Outcome:
    result: str
    reason: str
    duration_s: float | None = None
    downtime_s: float | None = None


def outcome(event: Mapping[str, Any]) -> Outcome | None:
    """The end of a migration attempt an event says, None when it says none."""
    type_, message = event.get("type"), str(event.get("message", ""))
    if type_ == "Migrated":
        downtime = _number(_DOWNTIME, message)
        took = _number(_TOOK, message)
        copied = _number(_COPIED, message)
        duration = took if took is not None else (copied / 1000 if copied is not None else None)
        return Outcome("completed", "none", duration, downtime / 1000 if downtime is not None else None)
    if type_ == "MigrationFailed" and _FAILED_ENDED.search(message):
        reason = next((r for text, r in _FAIL_REASONS if text in message), "job_failed")
        return Outcome("failed", reason)
    if type_ == "MigrationCancelled":
        return Outcome("cancelled", "admin")
    return None


def _number(pattern: re.Pattern[str], message: str) -> float | None:
    m = pattern.search(message)
    try:
        return float(m.group(1)) if m else None
    except ValueError:  # "1.2.3": not a figure the controller writes
        return None


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        self.counts[next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))] += 1
        self.total += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        counts = self.counts or [0] * (len(self.bounds) + 1)
        cumulative, running = [], 0
        for bound, n in zip((*(repr(b) for b in self.bounds), "+Inf"), counts, strict=True):
            running += n
            cumulative.append((bound, float(running)))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.total)


@dataclass
class MigrationTotals:
    """Running totals over the events counted so far, and where counting stands."""

    results: dict[tuple[str, str], int] = field(default_factory=dict)
    duration: _Histogram = field(default_factory=lambda: _Histogram(DURATION_BUCKETS))
    downtime: _Histogram = field(default_factory=lambda: _Histogram(DOWNTIME_BUCKETS))
    since: float = float("-inf")  # events written before are not counted (the collector's start)
    seen_time: float = float("-inf")  # the newest event time counted
    seen_keys: set[tuple[str, str, str]] = field(default_factory=set)  # the events counted at seen_time

    def unseen(self, event: Mapping[str, Any]) -> bool:
        """Whether `event` is one to count: written since `since`, and not counted yet."""
        at, key = float(event.get("time", 0.0)), _key(event)
        return at >= self.since and (at > self.seen_time or (at == self.seen_time and key not in self.seen_keys))

    def add(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Count the events (oldest first) newer than those counted before."""
        for e in events:
            if not self.unseen(e):
                continue
            at, key = float(e.get("time", 0.0)), _key(e)
            if at > self.seen_time:
                self.seen_time, self.seen_keys = at, set()
            self.seen_keys.add(key)
            self._count(e)

    def _count(self, event: Mapping[str, Any]) -> None:
        end = outcome(event)
        if end is None:
            return
        self.results[(end.result, end.reason)] = self.results.get((end.result, end.reason), 0) + 1
        if end.duration_s is not None:
            self.duration.observe(end.duration_s)
        if end.downtime_s is not None:
            self.downtime.observe(end.downtime_s)


def _key(event: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(event.get("name")), str(event.get("type")), str(event.get("message"))


def vms_by_state(report: Mapping[str, Any]) -> dict[str, int]:
    """A host's VMs by state (VM_STATES), as its report says."""
    running = set(report.get("running") or [])
    jobs = report.get("migrations") or {}
    leaving = {vm for vm in running if (jobs.get(vm) or {}).get("state") in _UNDER_WAY}
    incoming = set(report.get("prepared") or []) - running
    stopped = set(report.get("sizes") or {}) - running - incoming
    return {"running": len(running - leaving), "migrating": len(leaving), "incoming": len(incoming),
            "stopped": len(stopped)}


class MigrationCollector(Collector):
    def __init__(self, store: Store, reports: Callable[[], dict[str, dict[str, Any]]],
                 since: float | None = None) -> None:
        """Counts the outcomes recorded from `since` on (the wall clock, as events are stamped;
        by default now)."""
        self.store, self.reports = store, reports
        self.totals = MigrationTotals(since=time.time() if since is None else since)
        self._lock = threading.Lock()

    def _new_events(self) -> list[dict[str, Any]]:
        """The latest farm events: WINDOW of them, or SCAN_LIMIT when even the oldest of those is
        new (more may have come since the last scrape)."""
        events = self.store.events("farm", limit=WINDOW)
        if len(events) == WINDOW and self.totals.unseen(events[0]):
            events = self.store.events("farm", limit=SCAN_LIMIT)
        return events

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        with self._lock:
            self.totals.add(self._new_events())
            t = self.totals
            total = CounterMetricFamily("softudc_migrations", "Migration attempts ended, by result and reason "
                                        "(from the farms' stored events)", labels=["result", "reason"])
            for result, reason in [("completed", "none"), *(("failed", r) for r in REASONS), ("cancelled", "admin")]:
                total.add_metric([result, reason], float(t.results.get((result, reason), 0)))
            yield total
            yield t.duration.family("softudc_migration_duration_seconds",
                                    "Live migrations completed: seconds from the request to the arrival")
            yield t.downtime.family("softudc_migration_downtime_seconds",
                                    "Live migrations completed: the guest's downtime (the destination's word)")
        vms = GaugeMetricFamily("softudc_vms", "VMs per host by state, as its latest report says "
                                "(a host counted down has none)", labels=["host", "state"])
        for host, report in sorted(self.reports().items()):
            counts = vms_by_state(report) if report.get("state") != "down" else {}
            for state in VM_STATES:
                vms.add_metric([host, state], float(counts.get(state, 0)))
        yield vms
