"""The manager's state as a placement Cluster: hosts with state and capacity, instances with their
allocation, group (farm-qualified), measured use and last move."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softudc.manager.clusterview import cluster_of, hosts_of, last_moves
from softudc.manager.service import Manager
from tests.unit.manager.test_drain import world as drain_world


def world(tmp_path: Path) -> Manager:
    return drain_world(tmp_path, ("h1", "h2", "h3"))


def instances(m: Manager) -> list[dict[str, Any]]:
    obj = m.store.get("farm", "demo")
    assert obj is not None
    return list(obj.status["instances"])


def test_the_cluster_holds_every_instance_with_its_allocation_group_and_use(tmp_path: Path) -> None:
    m = world(tmp_path)
    inst = instances(m)
    web0 = next(i for i in inst if i["name"].startswith("web"))
    loads = {web0["host"]: {"vms": {f"demo--{web0['name']}": {"cpu_cores": {"short": 0.75, "long": 0.1},
                                                                "memory_mib": {"short": 90.0, "long": 80.0}}}}}
    c, index = cluster_of(m.store, m.reports(), loads, now=1000.0)
    c.validate()
    assert sorted(h.name for h in c.hosts) == ["h1", "h2", "h3"] and all(h.vcpus == 8 for h in c.hosts)
    assert {v.name for v in c.vms} == {f"demo/{i['name']}" for i in inst} == set(index)
    web = next(v for v in c.vms if v.name == f"demo/{web0['name']}")
    assert (web.cpu_use, web.mem_use_mib, web.group, web.host) == (0.75, 90.0, "demo/web-spread", web0["host"])
    db = next(v for v in c.vms if v.name.startswith("demo/db"))
    assert db.cpu_use is None and db.cpu == 1.0 and db.group is None and db.moved_at is None
    assert c.groups["demo/web-spread"].limit == 1
    assert index[web.name].farm == "demo" and index[web.name].instance == web0["name"]
    m.close()


def test_a_moving_vm_is_in_cooldown_and_a_migrated_one_carries_its_time(tmp_path: Path) -> None:
    m = world(tmp_path)
    inst = instances(m)
    inst[0]["migrating"] = {"to": "h9"}
    obj = m.store.get("farm", "demo")
    assert obj is not None
    m.store.set_status("farm", "demo", {**obj.status, "instances": inst})
    m.store.put_event("farm", "demo", "Migrated", f"{inst[1]['name']}: h1 -> h2 live, downtime 5 ms", 500.0)
    assert last_moves(m.store, "demo") == {inst[1]["name"]: 500.0}
    c, _ = cluster_of(m.store, m.reports(), {}, now=1000.0)
    at = {v.name: v.moved_at for v in c.vms}
    assert at[f"demo/{inst[0]['name']}"] == 1000.0 and at[f"demo/{inst[1]['name']}"] == 500.0
    m.close()


def test_host_states_map_onto_the_balancers() -> None:
    hosts = hosts_of({"a": {"vcpus": 4, "memory_mib": 1024, "state": "degraded"},
                      "b": {"vcpus": 4, "memory_mib": 1024, "state": "draining"},
                      "c": {"vcpus": 4, "memory_mib": 1024, "state": "weird"},
                      "d": {"state": "ready"}})
    assert [(h.name, h.state) for h in hosts] == [("a", "ready"), ("b", "draining"), ("c", "down")]
