"""gatekeeper/load.py with a fake libvirt: CPU from cpu-time deltas, memory, counter resets, VMs
that appear and vanish, bounded state, and a report's `load` the contract accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gatekeeper import load
from gatekeeper.load import LoadMeter
from softudc.model.hoststate import HostLoad, parse

A, B = "web--a", "web--b"


class FakeLibvirt:
    """Per-domain counters as HypervisorDriver.stats gives them, and a clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.doms: dict[str, dict[str, Any]] = {}

    def run(self, name: str, cpu_ns: int, rss_mib: int = 256) -> None:
        self.doms[name] = {"name": name, "state": "running", "cpu_time_ns": cpu_ns, "rss_kib": rss_mib * 1024}

    def stats(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self.doms.values()]

    def meter(self) -> LoadMeter:
        return LoadMeter(self.stats, clock=lambda: self.now, wall=lambda: self.now + 1e6)


def test_cpu_is_cpu_time_growth_over_wall_time() -> None:
    lv = FakeLibvirt()
    m = lv.meter()
    lv.run(A, 0)
    first = m.sample()
    assert first["vms"][A]["cpu_cores"] == {"short": 0.0, "long": 0.0}  # one sample: no CPU yet
    assert first["vms"][A]["memory_mib"] == {"short": 256.0, "long": 256.0}
    lv.now += 2
    lv.run(A, 3 * 10**9)  # 3 s of CPU in 2 s: 1.5 cores
    out = m.sample()
    assert out["vms"][A]["cpu_cores"] == {"short": 1.5, "long": 1.5}
    assert out["host"]["cpu_cores"]["short"] == 1.5 and out["samples"] == 2
    parse(HostLoad, out)


def test_short_window_follows_faster_than_long() -> None:
    lv = FakeLibvirt()
    m = lv.meter()
    lv.run(A, 0)
    m.sample()
    cpu = 0
    for _ in range(10):
        lv.now += 2
        cpu += 2 * 10**9  # 1 core
        lv.run(A, cpu)
        m.sample()
    for _ in range(15):  # idle for 30 s
        lv.now += 2
        lv.run(A, cpu)
        out = m.sample()
    short, long = out["vms"][A]["cpu_cores"]["short"], out["vms"][A]["cpu_cores"]["long"]
    assert short < long < 1.0 and short < 0.7


def test_counter_reset_starts_cpu_again_without_a_negative_figure() -> None:
    lv = FakeLibvirt()
    m = lv.meter()
    lv.run(A, 50 * 10**9)
    m.sample()
    lv.now += 2
    lv.run(A, 1 * 10**9)  # restarted: counter went down
    out = m.sample()
    assert out["vms"][A]["cpu_cores"] == {"short": 0.0, "long": 0.0}
    lv.now += 2
    lv.run(A, 2 * 10**9)
    assert m.sample()["vms"][A]["cpu_cores"]["short"] == 0.5


def test_vms_appearing_and_vanishing_host_is_the_sum() -> None:
    lv = FakeLibvirt()
    m = lv.meter()
    lv.run(A, 0, 100)
    m.sample()
    lv.run(B, 0, 300)
    lv.doms["unmanaged"] = {"name": "unmanaged", "state": "running", "cpu_time_ns": 0, "rss_kib": 1 << 30}
    out = m.sample()
    assert set(out["vms"]) == {A, B} and out["host"]["memory_mib"]["short"] == 400.0
    del lv.doms[A]
    out = m.sample()
    assert set(out["vms"]) == {B} and set(m.vms) == {B} and out["host"]["memory_mib"]["long"] == 300.0


def test_state_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(load, "MAX_VMS", 3)
    lv = FakeLibvirt()
    for i in range(10):
        lv.run(f"f--vm{i}", 0)
    m = lv.meter()
    assert len(m.sample()["vms"]) == 3 and len(m.vms) == 3


@given(st.lists(st.tuples(st.floats(0.01, 100), st.integers(-10**12, 10**12), st.integers(0, 1 << 40)),
                min_size=1, max_size=30))
def test_any_counters_give_a_load_the_contract_accepts(steps: list[tuple[float, int, int]]) -> None:
    lv = FakeLibvirt()
    m = lv.meter()
    for dt, cpu, rss in steps:
        lv.now += dt
        lv.doms[A] = {"name": A, "state": "running", "cpu_time_ns": max(cpu, 0), "rss_kib": rss}
        out = m.sample()
        parse(HostLoad, out)
        assert all(v >= 0 for w in out["host"].values() for v in w.values())
