"""softudc/manager/usage.py: deltas per (host, domain), a new domain counted from 0, a migration
across two hosts counted exactly in any interleaving of their reports, the books flushed with the
revision read (a fail-over continues from the written counters), --since by hour, the API's shape
and the Prometheus counters."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from softudc.manager.service import Manager
from softudc.manager.usage import (
    KIND,
    HostBook,
    UsageBook,
    UsageCollector,
    advance,
    report,
    usage_of,
    volume_bytes,
)
from softudc.model.hoststate import HostLoad, parse
from tests.unit.lab.test_prometheus import PROMTOOL, needs_promtool
from tests.unit.manager.test_loop import FakeStore

VM = "web--a"
S = 10**9


def sample(cpu_s: float, mem: float = 1024.0, ident: str = "", net: list[tuple[int, int, int]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    out: dict[str, Any] = {"cpu_ns": int(cpu_s * S), "memory_mib": mem,
                           "net": [{"vnet": v, "rx_bytes": rx, "tx_bytes": tx} for v, rx, tx in net]}
    if ident:
        out["id"] = ident
    return out


def a_load(at: float, usage: dict[str, Any]) -> dict[str, Any]:
    fig = {"cpu_cores": {"short": 0.0, "long": 0.0}, "memory_mib": {"short": 0.0, "long": 0.0}}
    return {"at": at, "samples": 1, "host": fig, "vms": {}, "usage": usage}


def test_a_first_sample_counts_from_zero_then_deltas() -> None:
    seen, d = advance(None, sample(5, net=[(7, 100, 50)]), 1000.0)
    assert d["cpu_s"] == 5 and d["net"] == {"7": [100, 50]} and d["mem_gib_h"] == 0.0
    seen, d = advance(seen, sample(8, net=[(7, 150, 70)]), 1000.0 + 3600)
    assert d["cpu_s"] == 3 and d["net"] == {"7": [50, 20]} and d["mem_gib_h"] == 1.0  # 1 GiB for an hour


def test_a_counter_that_went_down_or_another_identity_is_a_new_domain() -> None:
    seen, _ = advance(None, sample(50, ident="u/1"), 0.0)
    _, d = advance(seen, sample(2, ident="u/1"), 10.0)
    assert d["cpu_s"] == 2
    _, d = advance(seen, sample(60, ident="u/2"), 10.0)  # restarted elsewhere and back: counter higher
    assert d["cpu_s"] == 60


def test_a_domain_that_left_the_report_is_forgotten_and_counts_from_zero_when_back() -> None:
    b = HostBook(None, 0)
    b.note({VM: sample(10)}, 1.0)
    b.note({}, 2.0)
    assert VM not in b.seen and b.totals[VM]["cpu_s"] == 10
    b.note({VM: sample(12)}, 3.0)  # back by migration: a new QEMU (its counter from 0)
    assert b.totals[VM]["cpu_s"] == 22
    assert not b.note({VM: sample(99)}, 3.0)  # not newer: ignored
    assert b.totals[VM]["cpu_s"] == 22


def _true_total(runs: list[list[int]]) -> int:
    return sum(run[-1] for run in runs if run)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=1, max_size=40),
       st.integers(1, 30), st.randoms(use_true_random=False))
def test_any_interleaving_of_two_hosts_across_migrations_counts_the_true_total(
        steps: list[tuple[int, int]], start: int, rnd: Any) -> None:
    """The VM runs on one host at a time; each step is a report from host 0 or 1 after the VM used
    `inc` seconds; the VM migrates at random (a new domain there, counting from a small start).
    Total = what each domain's reports showed (last report of each domain run, from 0)."""
    books = [HostBook(None, 0), HostBook(None, 0)]
    where, cpu, runs = 0, start, [list[int]()]  # runs: what each domain's reports showed
    for at, (host, inc) in enumerate(steps, 1):
        if host == where:
            cpu += inc
            runs[-1].append(cpu)
            books[host].note({VM: sample(cpu)}, float(at))
        else:
            books[host].note({}, float(at))  # the other host: no such domain
        if rnd.random() < 0.2:  # migrate: the source reports it no more, the destination from a new start
            books[where].note({}, float(at) + 0.5)
            where, cpu = 1 - where, rnd.randint(0, 3)
            runs.append([])
    # a domain counts from 0 up to its last report (what it used after that no report showed)
    assert round(sum(b.totals.get(VM, {}).get("cpu_s", 0.0) for b in books)) == _true_total(runs)


def test_the_book_is_written_with_the_revision_read_and_a_fail_over_continues() -> None:
    store = FakeStore()
    a = UsageBook(store, "m1", every_s=3600)
    a.note("h1", a_load(1.0, {VM: sample(10)}))
    assert a.flush() and not a.flush()
    a.note("h1", a_load(2.0, {VM: sample(15)}))  # not written: m1 dies
    b = UsageBook(store, "m2", every_s=3600)  # the host reports to m2 now
    b.note("h1", a_load(3.0, {VM: sample(20)}))
    assert b.flush()
    assert usage_of(store)[VM]["cpu_s"] == 20  # 10 written, 10 more from the written counters
    a.flush()  # m1's late write: refused, its book dropped
    assert a.conflicts == 1 and usage_of(store)[VM]["cpu_s"] == 20
    a.close()
    b.close()


def test_since_counts_the_hours_from_the_one_it_falls_in() -> None:
    store = FakeStore()
    book = UsageBook(store, "m1", every_s=3600)
    h = 1_000 * 3600.0
    book.note("h1", a_load(h + 10, {VM: sample(10)}))
    book.note("h1", a_load(h + 3600 + 10, {VM: sample(25)}))
    book.flush()
    assert usage_of(store)[VM]["cpu_s"] == 25
    assert usage_of(store, since=h + 3600 + 500)[VM]["cpu_s"] == 15
    assert usage_of(store, since=h + 7200) == {}
    book.close()


def test_report_groups_by_farm_and_hides_unreadable_farms() -> None:
    usage = {"web--a": {"cpu_s": 1.0, "mem_gib_h": 0.5, "net": {"3": [1, 2]}, "last": 1.0},
             "web--b": {"cpu_s": 2.0, "mem_gib_h": 0.5, "net": {"3": [1, 1]}, "last": 1.0},
             "db--a": {"cpu_s": 9.0, "mem_gib_h": 0.0, "net": {}, "last": 1.0}}
    out = report(usage, lambda farm: farm == "web")
    assert [f["farm"] for f in out["farms"]] == ["web"]
    web = out["farms"][0]
    assert web["cpu_seconds"] == 3.0 and web["memory_gib_hours"] == 1.0
    assert web["network"] == [{"vnet": 3, "rx_bytes": 2, "tx_bytes": 3}] and len(web["vms"]) == 2


def test_a_report_s_usage_follows_the_contract_and_reaches_the_book(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    load = a_load(time.time(), {VM: sample(4, ident="u/1", net=[(5, 10, 20)])})
    parse(HostLoad, load)
    m.host_status("h1", "h1", {"vcpus": 8, "memory_mib": 8192, "running": [VM], "load": load})
    assert "usage" not in m.load_view.latest()["h1"]  # kept in the usage book, not the load view
    m.usage.flush()
    obj = store.get(KIND, "h1")
    assert obj is not None and obj.spec["totals"][VM]["cpu_s"] == 4
    text = {(mf.name, tuple(s.labels.values()), s.value) for mf in UsageCollector(store, lambda: m.usage).collect()
            for s in mf.samples}
    assert ("softudc_usage_cpu_seconds", ("web", VM), 4.0) in text
    assert ("softudc_usage_network_bytes", ("web", VM, "5", "tx"), 20.0) in text


@needs_promtool
def test_the_counters_pass_promtool(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    load = a_load(time.time(), {VM: sample(4, net=[(5, 10, 20)]), "db--x": sample(1)})
    m.host_status("h1", "h1", {"vcpus": 8, "memory_mib": 8192, "running": [VM, "db--x"], "load": load})
    registry = CollectorRegistry()
    registry.register(UsageCollector(store, lambda: m.usage))
    text = generate_latest(registry).decode()
    assert 'softudc_usage_memory_byte_seconds_total{farm="web",vm="web--a"}' in text
    check = subprocess.run([PROMTOOL or "promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_broken_usage_is_refused_with_the_load() -> None:
    from softudc.model.hoststate import problems_of
    bad = a_load(1.0, {VM: {"cpu_ns": -1}})
    assert any("usage" in p and "cpu_ns" in p for p in problems_of(HostLoad, bad))


def test_a_vm_s_volumes_are_charged_their_size_over_the_time_it_runs() -> None:
    seen, d = advance(None, sample(1), 0.0, vol_bytes=2 << 30)
    assert d["vol_gib_h"] == 0.0
    seen, d = advance(seen, sample(2), 1800.0, vol_bytes=4 << 30)  # 2 GiB held for half an hour
    assert d["vol_gib_h"] == 1.0
    _, d = advance(seen, sample(3), 3600.0)  # what it held at the last report, to this one
    assert d["vol_gib_h"] == 2.0


def test_volume_gib_hours_reach_the_report_and_the_counters(world: tuple[Manager, FakeStore]) -> None:
    from tests.unit.manager.test_volumes_api import FARM

    m, store = world
    store.put("farm", "shop", {"descriptor": FARM, "owner": "admin"})
    store.set_status("farm", "shop", {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]})
    assert volume_bytes(store) == {"shop--db-0": (2 << 30) + (64 << 40)}
    start = time.time() - 3700  # its last report within the hour the counters export
    for at, cpu in ((start, 1), (start + 3600, 2)):
        load = a_load(at, {"shop--db-0": sample(cpu)})
        m.host_status("h1", "h1", {"vcpus": 8, "memory_mib": 8192, "running": ["shop--db-0"], "load": load})
    shop = report(usage_of(store, extra=m.usage.latest()), lambda f: True)["farms"][0]
    assert shop["volume_gib_hours"] == shop["vms"][0]["volume_gib_hours"] == 2 + 64 * 1024  # an hour of both
    counters = {(mf.name, s.value) for mf in UsageCollector(store, lambda: m.usage).collect() for s in mf.samples}
    assert ("softudc_usage_volume_byte_seconds", float(((2 << 30) + (64 << 40)) * 3600)) in counters
