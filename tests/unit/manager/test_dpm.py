"""Consolidation wired to a manager (fake power drivers): switched on only by the environment; an
idle pool puts its least useful host in standby (drained, powered off, confirmed), never below
min_ready; high use wakes it again once it reports. HA rebalance: a fence that leaves the other
hosts overloaded runs a rebalance plan, once, saying why; nothing before the restarted VMs
settled, nothing when not overloaded, nothing while another plan runs or another manager claimed it."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from softudc.manager import dpm, plans, rollout
from softudc.manager.clusterview import Where
from softudc.manager.consolidate import Band
from softudc.manager.harestart import KIND as HA_KIND
from softudc.manager.service import Manager
from softudc.manager.store import NotLeader
from softudc.placement.balance import Limits
from softudc.placement.cluster import BHost, BVm, Cluster
from softudc.placement.overload import Trigger
from tests.unit.manager.test_loop import FakeStore
from tests.unit.manager.test_plans import ADMIN, busy_world, finish_moves
from tests.unit.manager.test_rollout import manager


def test_the_switch_and_the_band_come_from_the_environment() -> None:
    assert dpm.band_from_env({}) is None
    assert dpm.band_from_env({"SOFTUDC_CONSOLIDATE": "1"}) == Band()
    assert dpm.band_from_env({"SOFTUDC_CONSOLIDATE": "1", "SOFTUDC_CONSOLIDATE_BAND": "0.2,0.9"}) == Band(0.2, 0.9)
    assert dpm.band_from_env({"SOFTUDC_CONSOLIDATE": "1", "SOFTUDC_CONSOLIDATE_BAND": "0.1,0.2,5,6,7,1"}) == Band(
        0.1, 0.2, 5, 6, 7, 1)
    with pytest.raises(ValueError, match="expected 'LOW,HIGH"):
        dpm.band_from_env({"SOFTUDC_CONSOLIDATE": "1", "SOFTUDC_CONSOLIDATE_BAND": "x"})


def state(m: object, host: str) -> str:
    return str(m.store.get("host", host).spec.get("state", "ready"))  # type: ignore[attr-defined]


def settle(c: dpm.Consolidator) -> None:
    deadline = time.monotonic() + 20
    while c._thread is not None and c._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_an_idle_pool_parks_a_host_and_high_use_wakes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("softudc.manager.drain._keep_stepping", lambda *a: None)
    m, fakes, _ = manager(tmp_path, monkeypatch, ("h1", "h2", "h3"), {})
    c = dpm.Consolidator(m, Band(low_hold_s=0, high_hold_s=0, quiet_s=0, min_ready=2))
    m.store.put("rollout", "r1", {"state": "running"})
    assert "a rollout is running" in c.step().reason
    m.store.put("rollout", "r1", {"state": "done"})
    d = c.step()
    assert (d.action, d.host) == ("standby", "h3"), d
    settle(c)
    assert state(m, "h3") == "standby" and fakes["h3"].calls == ["off"]
    assert dpm.host_uses(m)[2].state == "standby"  # not down: silent on purpose
    assert c.step().action == "none"  # two ready hosts stay
    real = dpm.host_uses
    monkeypatch.setattr(dpm, "host_uses", lambda m: [replace(h, cpu_short=8.0) if h.state == "ready" else h
                                                     for h in real(m)])
    d = c.step()
    assert (d.action, d.host) == ("wake", "h3"), d
    settle(c)
    assert state(m, "h3") == "ready" and fakes["h3"].calls == ["off", "on"]
    types = [e["type"] for e in m.store.events("host", "h3")]
    assert types.count("Consolidation") == 2 and "ConsolidationFailed" not in types
    m.close()


def test_the_leaders_pass_resumes_plans_and_a_failing_resume_does_not_stop_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def broken(m: object) -> None:
        calls.append("plans")
        raise RuntimeError("store hiccup")

    monkeypatch.setattr(rollout, "resume", lambda m: calls.append("rollouts"))  # the modules dpm calls
    monkeypatch.setattr(plans, "resume", broken)
    monkeypatch.setattr(dpm, "consolidator", lambda m: calls.append("consolidation"))
    monkeypatch.setattr(dpm, "_trigger", lambda m: Trigger())
    monkeypatch.setattr(dpm, "ha_rebalance", lambda m, t: calls.append("ha"))
    dpm.maintenance_step(object())  # type: ignore[arg-type]
    assert calls == ["rollouts", "plans", "ha", "consolidation"]
    monkeypatch.setattr(dpm, "_trigger", lambda m: None)  # SOFTUDC_HA_REBALANCE=0
    calls.clear()
    dpm.maintenance_step(object())  # type: ignore[arg-type]
    assert calls == ["rollouts", "plans", "consolidation"]
    monkeypatch.setattr(plans, "resume", lambda m: (_ for _ in ()).throw(NotLeader("deposed")))
    with pytest.raises(NotLeader):  # a deposed leader's pass stops there
        dpm.maintenance_step(object())  # type: ignore[arg-type]


def test_the_ha_rebalance_is_on_by_default_and_its_trigger_comes_from_the_environment() -> None:
    assert dpm.trigger_from_env({}) == Trigger()
    assert dpm.trigger_from_env({"SOFTUDC_HA_REBALANCE": "0"}) is None
    assert dpm.trigger_from_env({"SOFTUDC_HA_REBALANCE_TRIGGER": "0.1,0.9,5,50"}) == Trigger(0.1, 0.9, 5, 50)
    with pytest.raises(ValueError, match=r"SOFTUDC_HA_REBALANCE_TRIGGER='0\.1'"):
        dpm.trigger_from_env({"SOFTUDC_HA_REBALANCE_TRIGGER": "0.1"})
    with pytest.raises(ValueError, match=r"hot 2\.0"):
        dpm.trigger_from_env({"SOFTUDC_HA_REBALANCE_TRIGGER": "0.1,2"})


def fenced(m: Manager, ago: float) -> None:
    """h5 was fenced `ago` seconds ago (its VMs restarted on the others: here, the hot host)."""
    m.store.put("host", "h5", {"joined": time.time(), "state": "standby"})
    m.store.put(HA_KIND, "h5", {"state": "fenced", "at": time.time() - ago, "reason": "confirmed off"})


def ha_events(m: Manager) -> list[str]:
    return [e["message"] for e in m.store.events("host", "h5") if e["type"] == "HaRebalance"]


def test_an_overload_after_a_fence_runs_a_rebalance_plan_once_saying_why(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    fenced(m, ago=120)
    pid = dpm.ha_rebalance(m, Trigger())
    assert pid is not None
    p = plans.show(m, ADMIN, pid)
    assert p["state"] == "running" and p["by"] == "ha-rebalance" and p["moves"], p
    assert p["score_after"] < p["score_before"] and p["limits"] == asdict(Limits())
    record = m.store.get(HA_KIND, "h5")
    assert record is not None and "over 85% of capacity" in record.spec["rebalance"]["why"][0]
    [said] = ha_events(m)
    assert "after fencing h5 are overloaded (over 85% of capacity: " in said and f"plan {pid} runs" in said
    assert dpm.ha_rebalance(m, Trigger()) is None  # a plan runs
    finish_moves(m)
    assert plans.step(m, ADMIN, pid)["state"] == "done"
    assert dpm.ha_rebalance(m, Trigger()) is None and len(ha_events(m)) == 1  # once per fence
    assert len(plans.listing(m, ADMIN)) == 1
    m.close()


def test_nothing_before_the_restart_settled_nor_when_the_rest_is_not_overloaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    fenced(m, ago=10)
    assert dpm.ha_rebalance(m, Trigger(settle_s=60)) is None
    real = plans.current

    def calm(m: Manager, now: float | None = None) -> tuple[Cluster, dict[str, Where]]:
        c, index = real(m, now)  # the same cluster, its VMs idle
        return Cluster(c.hosts, [replace(v, cpu_use=0.1) for v in c.vms], c.groups), index

    monkeypatch.setattr(plans, "current", calm)
    assert dpm.ha_rebalance(m, Trigger(spread=10.0, settle_s=5)) is None
    record = m.store.get(HA_KIND, "h5")
    assert record is not None and "rebalance" not in record.spec  # still watched
    assert plans.listing(m, ADMIN) == [] and ha_events(m) == []
    m.close()


def test_a_vm_left_on_a_fenced_host_is_never_planned_to_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    hot = max(m.reports(), key=lambda h: len(m.reports()[h].get("running", [])))
    m.store.put(HA_KIND, hot, {"state": "fenced", "at": time.time() - 120, "reason": "confirmed off"})
    p = plans.create(m, ADMIN, {"dry_run": True})
    assert not [mv for mv in p["moves"] if mv["source"] == hot], p["moves"]  # its VMs run nowhere: no live move
    m.close()


def test_a_fence_another_manager_claimed_or_no_helpful_move_starts_nothing(
        world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    m, store = world
    store.put(HA_KIND, "h1", {"state": "fenced", "at": time.time() - 120})
    hot = Cluster([BHost("h2", 2, 1024)], [BVm("farm/a-0", "h2", 2, 1000)])
    monkeypatch.setattr(plans, "current", lambda m, now=None: (hot, {}))
    real_put = store.put

    def racing(kind: str, name: str, spec: dict[str, object], expect: int | None = None) -> int:
        if kind == HA_KIND and expect is not None:  # another manager wrote the record first
            real_put(kind, name, {**spec, "rebalance": {"at": 1.0, "why": ["theirs"]}})
        return real_put(kind, name, spec, expect)

    monkeypatch.setattr(store, "put", racing)
    assert dpm.ha_rebalance(m, Trigger()) is None
    record = store.get(HA_KIND, "h1")
    assert record is not None and record.spec["rebalance"]["why"] == ["theirs"] and ha_events(m) == []
    monkeypatch.setattr(store, "put", real_put)
    store.put(HA_KIND, "h1", {"state": "fenced", "at": time.time() - 120})
    monkeypatch.setattr(plans, "create", lambda m, who, body: {"id": "p1", "moves": []})
    assert dpm.ha_rebalance(m, Trigger()) is None
    [said] = [e["message"] for e in store.events("host", "h1") if e["type"] == "HaRebalance"]
    assert "over capacity: h2: cpu 2/2 mem 1000/1024" not in said and "no move lowers the score (plan p1)" in said
