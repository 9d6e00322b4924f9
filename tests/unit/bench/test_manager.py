"""`softudc bench manager` at N=5 for a few seconds: a real daemon, real mutual TLS, every host
told its instances; the JSON has the shape the docs and the coordinator read."""

from __future__ import annotations

from softudc.bench.manager import TARGETS, farm_yaml, percentile, run_manager
from softudc.model.farm import validate

RUN_KEYS = {"backend", "hosts", "admin_p50_ms", "admin_p99_ms", "report_p50_ms", "report_p99_ms", "rss_mib",
            "cpu_pct", "apply_to_all_s", "client_processes", "clients_cpu_pct"}


def test_five_hosts_for_a_few_seconds() -> None:
    result = run_manager(hosts=[5], backends=["sqlite"], seconds=3.0, vms=20)
    assert result["benchmark"] == "manager" and result["targets"] == TARGETS
    assert {"cpus", "python"} <= set(result["machine"])
    [run] = result["runs"]
    assert set(run) >= RUN_KEYS, run
    assert run["backend"] == "sqlite" and run["hosts"] == 5 and run["client_errors"] == 0
    assert run["apply_placed"] == 20 and run["apply_hosts_told"] == run["apply_hosts"] > 0
    assert run["apply_to_all_s"] is not None and run["apply_to_all_s"] < 30  # every host got its state
    assert run["reports"] > 0 and run["report_p99_ms"] is not None and run["admin_failures"] == []
    assert 0 < run["rss_mib"] < 1024


def test_the_big_farm_is_a_valid_descriptor_of_that_many_vms() -> None:
    text = farm_yaml("big", 1000, 4, "10.100.0.0")
    farm = validate(text)
    assert len(farm.vnets) == 4 and sum(v.replicas for v in farm.vms) == 1000


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
