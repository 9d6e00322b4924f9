"""GET /v1/load/hosts and /v1/load/vms: state, capacity and load per host, VMs filtered by farm."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from softudc.manager.apiload import host_loads, vm_loads
from softudc.manager.auth import Principal
from softudc.manager.service import Manager, init
from tests.unit.manager.test_load import a_load
from tests.unit.manager.test_loop import FakeStore

ADMIN = Principal("admin", "admin")
VIEWER = Principal("v", "viewer", farms=("web",))


@pytest.fixture
def m(tmp_path: Path) -> Iterator[Manager]:
    init(tmp_path, ["127.0.0.1"])
    store = FakeStore()
    mgr = Manager(tmp_path, store=store)
    mgr.manager_id = "m1"
    for h in ("h1", "h2"):
        store.put("host", h, {"joined": time.time(), "certificate": "f1"})
    load = a_load(time.time(), 1.5)
    load["vms"]["db--x"] = load["vms"]["web--a"]
    mgr.host_status("h1", "h1", {"vcpus": 4, "memory_mib": 8192, "running": ["web--a", "db--x"], "load": load})
    mgr.host_status("h2", "h2", {"vcpus": 8, "memory_mib": 4096, "running": []})
    yield mgr
    mgr.close()
    mgr.close_hosts()


def test_hosts_have_state_capacity_and_load_before_any_flush(m: Manager) -> None:
    rows = {r["host"]: r for r in host_loads(m, ADMIN)}
    assert rows["h1"]["capacity"] == {"cpu_cores": 4, "memory_mib": 8192} and rows["h1"]["vms"] == 2
    assert rows["h1"]["cpu_cores"]["short"] == 1.5 and rows["h1"]["age_s"] < 5 and rows["h1"]["state"] == "ready"
    assert "cpu_cores" not in rows["h2"]  # no load sent yet: listed without figures
    assert {r["host"]: r["vms"] for r in host_loads(m, VIEWER)} == {"h1": 1, "h2": 0}


def test_vms_are_filtered_by_the_farms_one_may_read(m: Manager) -> None:
    assert [r["vm"] for r in vm_loads(m, ADMIN)] == ["db--x", "web--a"]
    mine = vm_loads(m, VIEWER)
    assert [r["vm"] for r in mine] == ["web--a"] and mine[0]["host"] == "h1" and mine[0]["farm"] == "web"
