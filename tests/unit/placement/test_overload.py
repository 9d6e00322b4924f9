"""When a cluster counts as overloaded after a fence (hosts over capacity, over `hot`, the spread
over its trigger), and which fences are due a look (in the window, once)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.placement.cluster import BHost, BVm, Cluster
from softudc.placement.overload import Trigger, due, hot_hosts, overloaded


def test_a_balanced_cluster_within_capacity_is_not_overloaded() -> None:
    c = Cluster([BHost("h1", 4, 4096), BHost("h2", 4, 4096)],
                [BVm("a", "h1", 2, 1024, cpu_use=1.0), BVm("b", "h2", 2, 1024, cpu_use=1.0)])
    assert overloaded(c, Trigger()) == []


def test_each_reason_names_its_hosts_and_figures() -> None:
    hosts = [BHost("h1", 4, 4096), BHost("h2", 4, 4096), BHost("h3", 4, 4096, "standby")]
    hot = Cluster(hosts, [BVm("a", "h1", 2, 1024, cpu_use=3.8), BVm("b", "h2", 1, 512, cpu_use=0.1),
                          BVm("c", "h3", 4, 4096)])  # c: on the fenced host, counts nowhere
    why = overloaded(hot, Trigger(spread=5.0))
    assert why == ["over 85% of capacity: h1 cpu 95%"]
    assert overloaded(hot, Trigger(hot=0.99)) == ["spread 0.467 over 0.25"]
    over = Cluster(hosts[:2], [BVm("a", "h1", 4, 1024, cpu_use=0.5), BVm("b", "h1", 2, 1024, cpu_use=0.5)])
    assert overloaded(over, Trigger())[0] == "over capacity: h1: cpu 6/4 mem 2048/4096"
    unmeasured = Cluster(hosts[:1], [BVm("a", "h1", 1, 4000)])  # memory by allocation
    assert hot_hosts(unmeasured, 0.85) == ["h1 memory 98%"]


def test_a_bad_trigger_is_refused_naming_the_values() -> None:
    with pytest.raises(ValueError, match=r"hot 1\.5"):
        Trigger(hot=1.5)
    with pytest.raises(ValueError, match="settle 900"):
        Trigger(settle_s=900, watch_s=600)


def test_a_fence_is_due_between_settle_and_watch_and_only_until_it_had_its_rebalance() -> None:
    t = Trigger(settle_s=60, watch_s=900)
    records: dict[str, dict[str, Any]] = {"h1": {"state": "fenced", "at": 1000.0},
               "h2": {"state": "fencing", "since": 900.0},
               "h3": {"state": "fenced", "at": 1000.0, "rebalance": {"at": 1100.0}}, "h4": {"state": "nopower"}}
    assert due(records, 1030.0, t) == []
    assert due(records, 1060.0, t) == ["h1"]
    assert due(records, 1900.0, t) == []


@given(st.floats(0, 2000), st.floats(0, 2000), st.booleans(), st.sampled_from(["fenced", "failed", "fencing"]))
def test_property_due_only_for_a_fence_in_its_window_without_a_rebalance(at: float, now: float, done: bool,
                                                                         state: str) -> None:
    t = Trigger(settle_s=60, watch_s=900)
    record = {"state": state, "at": at, **({"rebalance": {"at": at}} if done else {})}
    assert (due({"h": record}, now, t) == ["h"]) == (state == "fenced" and not done and 60 <= now - at < 900)


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    n = draw(st.integers(1, 5))
    hosts = [BHost(f"h{i}", draw(st.sampled_from([2, 4, 8])), 4096, draw(st.sampled_from(["ready", "standby"])))
             for i in range(n)]
    vms = [BVm(f"v{i}", f"h{draw(st.integers(0, n - 1))}", 1, draw(st.sampled_from([256, 1024])),
               cpu_use=draw(st.one_of(st.none(), st.floats(0, 4))))
           for i in range(draw(st.integers(0, 10)))]
    return Cluster(hosts, vms)


@given(clusters(), st.floats(0.05, 1.0))
def test_property_hot_names_exactly_the_ready_hosts_over_the_share(c: Cluster, hot: float) -> None:
    named = {s.split()[0] for s in hot_hosts(c, hot)}
    for h in c.hosts:
        cpu = sum(v.cpu for v in c.vms if v.host == h.name) / h.vcpus
        mem = sum(v.mem for v in c.vms if v.host == h.name) / h.memory_mib
        assert (h.name in named) == (h.state == "ready" and max(cpu, mem) > hot)
    assert bool(named) == any(r.startswith("over ") and "capacity:" in r and not r.startswith("over capacity")
                              for r in overloaded(c, Trigger(hot=hot)))
