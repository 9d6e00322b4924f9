"""softudc/manager/load.py: a report's `load` is kept apart, so two reports that differ only in
load are a heartbeat (no host write) while the load view has the new figures; the view reaches the
store at most every FLUSH_EVERY_S, and load_of merges every manager's view with ages."""

from __future__ import annotations

import time
from typing import Any

import pytest

from softudc.manager.errors import ApiError
from softudc.manager.load import KIND, LoadView, load_of, split_load
from softudc.manager.service import Manager
from tests.unit.manager.conftest import host_writes
from tests.unit.manager.test_loop import FakeStore

REPORT = {"vcpus": 64, "memory_mib": 65536, "running": []}


def a_load(at: float, cores: float, vm: str = "web--a") -> dict[str, Any]:
    fig = {"cpu_cores": {"short": cores, "long": cores}, "memory_mib": {"short": 512.0, "long": 500.0}}
    return {"at": at, "samples": 3, "host": fig, "vms": {vm: fig}}


def test_reports_differing_only_in_load_are_heartbeats_and_the_view_has_the_new_figures(
        world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.host_status("h1", "h1", {**REPORT, "load": a_load(time.time(), 0.5)})
    stored = store.get("host", "h1")
    assert stored is not None and "load" not in stored.status  # never in the stored report
    n = len(store.writes)
    for i in range(5):
        assert m.host_status("h1", "h1", {**REPORT, "load": a_load(time.time(), 1.0 + i)})["stored"]
    assert host_writes(store, n) == []
    assert m.load_view.latest()["h1"]["host"]["cpu_cores"]["short"] == 5.0


def test_the_fast_path_takes_a_load_only_report_as_a_heartbeat(world: tuple[Manager, FakeStore]) -> None:
    m, _store = world
    m.address_noted("h1", "192.0.2.1")
    m.host_status("h1", "h1", {**REPORT, "load": a_load(time.time(), 0.5)})
    m.stored_hosts.refresh()
    beat = m.report_heartbeat("h1", "h1", "f1", {**REPORT, "load": a_load(time.time(), 2.0)}, None)
    assert beat == {"host": "h1", "stored": True}
    assert m.load_view.latest()["h1"]["host"]["cpu_cores"]["long"] == 2.0
    # a broken load is not taken from memory: the full path refuses it, naming the field
    assert m.report_heartbeat("h1", "h1", "f1", {**REPORT, "load": {"at": "now"}}, None) is None
    with pytest.raises(ApiError) as e:
        m.host_status("h1", "h1", {**REPORT, "load": {"at": "now"}})
    assert "load" in str(e.value) and m.load_view.latest()["h1"]["host"]["cpu_cores"]["long"] == 2.0


def test_the_view_is_written_at_most_once_per_flush_and_only_when_changed() -> None:
    store = FakeStore()
    view = LoadView(store, "m1", every_s=3600)
    for i in range(100):
        assert view.note("h1", a_load(1000.0 + i, 1.0))
    assert view.flush() and not view.flush()
    assert view.flushes == 1 and [k for _, k, _, _ in store.writes].count(KIND) == 1
    view.close()


def test_load_of_takes_each_host_s_newest_sample_of_any_manager_with_its_age() -> None:
    store = FakeStore()
    store.put(KIND, "m1", {"flushed": 1, "hosts": {"h1": a_load(1000.0, 1.0), "h2": a_load(1005.0, 2.0)}})
    store.put(KIND, "m2", {"flushed": 1, "hosts": {"h1": a_load(1010.0, 3.0), "old": a_load(1.0, 9.0)}})
    out = load_of(store, now=1020.0)
    assert set(out) == {"h1", "h2"}  # a sample older than STALE_S is not shown
    assert out["h1"]["cpu_cores"] == {"short": 3.0, "long": 3.0} and out["h1"]["age_s"] == 10.0
    assert out["h2"]["vms"]["web--a"]["memory_mib"]["short"] == 512.0
    assert load_of(store, now=1020.0, extra={"h2": a_load(1019.0, 7.0)})["h2"]["age_s"] == 1.0


def test_split_load_leaves_the_body_alone() -> None:
    body = {**REPORT, "load": a_load(1.0, 1.0)}
    rest, load = split_load(body)
    assert "load" in body and "load" not in rest and load == body["load"]
    assert split_load(REPORT) == (REPORT, None)


def test_the_collector_exports_each_host_s_load() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from softudc.manager.load import LoadCollector

    store = FakeStore()
    view = LoadView(store, "m1", every_s=3600)
    view.note("h1", a_load(time.time(), 1.25))
    assert not view.note("h2", {"at": -1})
    registry = CollectorRegistry()
    registry.register(LoadCollector(store, lambda: view))
    text = generate_latest(registry).decode()
    assert 'softudc_host_cpu_cores{host="h1",window="short"} 1.25' in text
    assert 'softudc_host_memory_used_mib{host="h1",window="long"} 500.0' in text
    assert "softudc_manager_load_refused_total 1.0" in text and 'host="h2"' not in text
    view.close()
