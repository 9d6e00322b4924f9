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


def test_concurrent_callers_share_looks_and_none_is_answered_from_before_its_call() -> None:
    import threading
    import time

    store = FakeStore()
    store.put("host", "h1", {})
    cache = StoredHosts(store)
    cache.refresh()
    looks: list[int] = []
    real = store.revision

    def slow_revision() -> int:
        looks.append(1)
        time.sleep(0.05)  # a round trip to etcd
        return real()

    store.revision = slow_revision  # type: ignore[method-assign]
    seen: list[bool] = []

    def report(i: int) -> None:
        store.set_status("host", "h1", {"n": i})  # written before this caller asks
        got = cache.get("h1")
        seen.append(got is not None and got.status.get("n", -1) >= i)

    threads = [threading.Thread(target=report, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(seen) and len(seen) == 20  # each saw its own write or a later one
    assert len(looks) < 20  # shared: not one round trip each
