"""The manager's placement and plan metrics: the cluster score now with its parts, the hard rules
broken, the plans by state and the running plans' moves by state."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from softudc.manager.clusterview import cluster_of
from softudc.manager.metrics import FarmVolumesCollector, PlacementCollector, make_registry
from softudc.placement.score import score
from tests.unit.manager.test_drain import world


def samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == name:
                out[",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))] = s.value
    return out


def test_the_score_and_its_parts_are_the_balancers(tmp_path: Path) -> None:
    m = world(tmp_path, ("h1", "h2", "h3"))
    registry = CollectorRegistry()
    registry.register(PlacementCollector(m.store, m.reports, lambda: {}))
    got = samples(registry, "softudc_cluster_score")
    b = score(cluster_of(m.store, m.reports(), {})[0])
    assert got["part=total"] == pytest.approx(b.total, abs=1e-6) and got["part=penalty"] == 0.0
    assert got["part=spread_cpu"] == pytest.approx(b.spread_cpu, abs=1e-6)
    assert got["part=spread_memory"] == pytest.approx(b.spread_mem, abs=1e-6)
    assert samples(registry, "softudc_cluster_hard_rule_breaks") == {
        "rule=off_ready": 0.0, "rule=anti_affinity": 0.0, "rule=over_capacity": 0.0}
    m.close()


def test_a_vm_on_a_host_going_down_is_a_break_and_raises_the_penalty(tmp_path: Path) -> None:
    m = world(tmp_path, ("h1", "h2"))
    reports = m.reports()
    busy = next(h for h, r in sorted(reports.items()) if r.get("running"))
    reports[busy] = {**reports[busy], "state": "draining"}
    registry = CollectorRegistry()
    registry.register(PlacementCollector(m.store, lambda: reports, lambda: {}))
    breaks = samples(registry, "softudc_cluster_hard_rule_breaks")["rule=off_ready"]
    assert breaks == len(reports[busy]["running"]) >= 1
    assert samples(registry, "softudc_cluster_score")["part=penalty"] == pytest.approx(10.0 * breaks)
    m.close()


def test_plans_by_state_and_the_running_plans_moves(tmp_path: Path) -> None:
    m = world(tmp_path, ("h1", "h2"))
    moves = [{"vm": f"demo/v{i}"} for i in range(4)]
    for name, state, status_moves in (("p1", "running", {"demo/v0": "done", "demo/v1": "moving"}),
                                      ("p2", "done", {"demo/v0": "done"}), ("p3", None, {})):
        m.store.put("plan", name, {"kind": "rebalance", "moves": moves})
        if state:
            m.store.set_status("plan", name, {"state": state, "moves": status_moves})
    registry = CollectorRegistry()
    registry.register(PlacementCollector(m.store, m.reports, lambda: {}))
    assert samples(registry, "softudc_plans") == {"state=planned": 1.0, "state=running": 1.0, "state=done": 1.0,
                                                  "state=failed": 0.0}
    assert samples(registry, "softudc_plan_moves") == {"state=pending": 2.0, "state=moving": 1.0,
                                                       "state=done": 1.0, "state=failed": 0.0}
    m.close()


def test_the_managers_registry_passes_promtool(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus: make bootstrap)")
    m = world(tmp_path, ("h1", "h2"))
    registry, _, _ = make_registry(m.store, m.reports)
    text = generate_latest(registry)
    assert b"softudc_cluster_score{" in text and b"softudc_plans{" in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    m.close()


def test_the_image_store_is_exported_when_the_manager_holds_one(tmp_path: Path) -> None:
    from softudc.images.store import ImageStore

    m = world(tmp_path, ("h1",))
    ImageStore.open(tmp_path / "images").close()
    registry, _, _ = make_registry(m.store, m.reports, images=tmp_path / "images")
    assert samples(registry, "softudc_image_objects") == {"": 0.0}
    registry, _, _ = make_registry(m.store, m.reports)
    assert samples(registry, "softudc_image_objects") == {}
    m.close()


def test_a_farm_s_volumes_by_state_held_planned_or_unplaced(tmp_path: Path) -> None:
    from tests.unit.manager.test_volumes_api import FARM

    m = world(tmp_path, ("h1",))
    gib = 1 << 30
    m.store.put("farm", "shop", {"descriptor": FARM, "owner": "admin"})
    m.store.set_status("farm", "shop", {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]})
    reports = {"h1": {"vcpus": 8, "memory_mib": 8192, "running": [],
                      "pool": {"capacity_bytes": 10 * gib, "free_bytes": 10 * gib}}}
    registry = CollectorRegistry()
    registry.register(FarmVolumesCollector(m.store, lambda: reports))
    shop = {k: v for k, v in samples(registry, "softudc_farm_volumes").items() if "farm=shop" in k}
    assert shop == {"farm=shop,state=held": 0.0, "farm=shop,state=planned": 1.0, "farm=shop,state=unplaced": 1.0}
    reports["h1"]["volumes"] = {"shop--db-0--data": {}}  # h1 holds it (contract 3: not exported yet)
    held = samples(registry, "softudc_farm_volumes")
    assert (held["farm=shop,state=held"], held["farm=shop,state=planned"]) == (1.0, 0.0)
    m.close()
