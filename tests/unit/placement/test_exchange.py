"""Exchanges (two VMs trading hosts, one plan item): each lowers the score by at least min_gain,
keeps capacity after each of its two moves, and trades no member of a group with a limit."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.placement.balance import _Balancer
from softudc.placement.cluster import BHost, BVm, Cluster
from softudc.placement.exchange import exchanges
from softudc.placement.model import Group
from softudc.placement.score import score


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    n = draw(st.integers(2, 6))
    hosts = [BHost(f"h{i}", draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([4096, 16384])),
                   draw(st.sampled_from(["ready"] * 4 + ["standby"]))) for i in range(n)]
    vms = [BVm(f"v{i}", f"h{draw(st.integers(0, n - 1))}", draw(st.sampled_from([1, 2, 4])),
               draw(st.sampled_from([512, 1024, 2048])), cpu_use=draw(st.floats(0, 4)),
               group=draw(st.sampled_from([None, None, None, "g"])))
           for i in range(draw(st.integers(0, 20)))]
    return Cluster(hosts, vms, {"g": Group("g", "anti-affinity", 2)})


def _fits(c: Cluster) -> set[str]:
    """The hosts within capacity by allocation."""
    ac: Counter[str] = Counter()
    am: Counter[str] = Counter()
    for v in c.vms:
        ac[v.host] += v.vcpus
        am[v.host] += v.memory_mib
    return {h.name for h in c.hosts if ac[h.name] <= h.vcpus and am[h.name] <= h.memory_mib}


@settings(max_examples=150, deadline=None)
@given(clusters())
def test_property_each_exchange_gains_keeps_capacity_move_by_move_and_leaves_group_members(c: Cluster) -> None:
    b = _Balancer(c, 0.001, 600.0, 0.0, 4)
    entries = exchanges(b, 0.001, 0, 50)
    assert len(entries) % 2 == 0
    current = c
    for first, second in zip(entries[::2], entries[1::2], strict=True):
        assert first[6] == second[6] and first[1:3] == second[2:0:-1]  # one item: a trades with b, b with a
        before = score(current).total
        fits = _fits(current)
        for j, s, d, reason, *_ in (first, second):
            vm = current.vms[j]
            assert vm.host == c.hosts[s].name and vm.group is None and "exchange" in reason
            current = current.moved({vm.name: c.hosts[d].name})
            assert fits <= _fits(current)  # no host that fitted is over capacity after either move
        assert score(current).total <= before - 0.001 + 1e-9
    assert len({e[0] for e in entries}) == len(entries)  # no VM traded twice


def test_an_exchange_evens_two_hosts_no_single_move_can() -> None:
    hosts = [BHost("h1", 16, 16384), BHost("h2", 16, 16384)]
    vms = [BVm("hot", "h1", 4, 2048, cpu_use=4.0), BVm("hot2", "h1", 4, 2048, cpu_use=4.0),
           BVm("cold", "h2", 4, 2048, cpu_use=3.0), BVm("cold2", "h2", 4, 2048, cpu_use=3.0)]
    b = _Balancer(Cluster(hosts, vms), 0.001, 600.0, 0.0, 4)
    [(j, s, d, reason, sb, sa, item), second] = exchanges(b, 0.001, 7, 10)
    assert (vms[j].name, s, d, item) == ("hot", 0, 1, 7) and second[1:3] == (1, 0) and second[6] == 7
    assert "exchange 1/2 with cold: together score" in reason and sa > sb and second[5] < 1e-9
