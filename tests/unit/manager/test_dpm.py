"""Consolidation wired to a manager (fake power drivers): switched on only by the environment; an
idle pool puts its least useful host in standby (drained, powered off, confirmed), never below
min_ready; high use wakes it again once it reports."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from softudc.manager import dpm
from softudc.manager.consolidate import Band
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

    monkeypatch.setattr(dpm.rollout, "resume", lambda m: calls.append("rollouts"))
    monkeypatch.setattr(dpm.plans, "resume", broken)
    monkeypatch.setattr(dpm, "consolidator", lambda m: calls.append("consolidation"))
    dpm.maintenance_step(object())  # type: ignore[arg-type]
    assert calls == ["rollouts", "plans", "consolidation"]
    monkeypatch.setattr(dpm.plans, "resume", lambda m: (_ for _ in ()).throw(dpm.NotLeader("deposed")))
    with pytest.raises(dpm.NotLeader):  # a deposed leader's pass stops there
        dpm.maintenance_step(object())  # type: ignore[arg-type]
