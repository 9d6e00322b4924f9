"""StoredHosts follows the store through its changes (writes, deletes, migrations starting and
ending), reads everything again when far behind, and same_report compares all but `reported`."""

from __future__ import annotations

from softudc.manager import reports
from softudc.manager.reports import StoredHosts, same_report
from tests.unit.manager.test_loop import FakeStore


def test_same_report_ignores_only_reported() -> None:
    assert same_report({"vcpus": 1, "reported": 5.0}, {"vcpus": 1})
    assert not same_report({"vcpus": 1, "reported": 5.0}, {"vcpus": 2})
    assert not same_report({"vcpus": 1, "errors": [], "reported": 5.0}, {"vcpus": 1})
    assert not same_report({"vcpus": 1}, {"vcpus": 1, "errors": []})
    assert not same_report({"vcpus": 1, "reported": 5.0}, {"vcpus": 1, "reported": 5.0, "x": 1})


def test_the_cache_follows_the_store_s_changes() -> None:
    store = FakeStore()
    store.put("host", "h1", {"certificate": "a"})
    cache = StoredHosts(store)
    first = cache.get("h1")
    assert first is not None and cache.loads == 1
    store.set_status("host", "h1", {"vcpus": 2})
    got = cache.get("h1")
    assert got is not None and got.status == {"vcpus": 2}
    store.put("host", "h2", {})
    store.delete("host", "h1")
    assert cache.get("h1") is None and cache.get("h2") is not None
    assert cache.loads == 1  # followed by changes, not read again


def test_busy_while_a_farm_has_an_instance_migrating() -> None:
    store = FakeStore()
    store.put("farm", "x", {})
    cache = StoredHosts(store)
    assert not cache.get("h") and not cache.busy()
    store.set_status("farm", "x", {"instances": [{"name": "a-0", "migrating": {"to": "h2"}}]})
    cache.refresh()
    assert cache.busy()
    store.set_status("farm", "x", {"instances": [{"name": "a-0"}]})
    cache.refresh()
    assert not cache.busy()
    store.set_status("farm", "x", {"instances": [{"name": "a-0", "migrating": {"to": "h2"}}]})
    store.delete("farm", "x")
    cache.refresh()
    assert not cache.busy()


def test_far_behind_it_reads_everything_again() -> None:
    store = FakeStore()
    store.put("host", "h1", {})
    cache = StoredHosts(store)
    cache.refresh()
    for i in range(reports.MAX_BEHIND + 1):
        store.put("farm", f"f{i % 3}", {})
    store.delete("host", "h1")
    assert cache.get("h1") is None and cache.loads == 2
