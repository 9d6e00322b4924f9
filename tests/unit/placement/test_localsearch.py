from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.placement.cluster import BHost, BVm, Cluster
from softudc.placement.localsearch import Search, relabel, search
from tests.unit.placement.test_balance import clusters


def _legal(c: Cluster, where: list[int], start: list[int]) -> list[str]:
    """Hard rules a placement breaks that `start` did not: room, anti-affinity, a new VM on a host not ready."""
    out = []
    alloc_c: Counter[int] = Counter()
    alloc_m: Counter[int] = Counter()
    members: Counter[tuple[str, int]] = Counter()
    for v, h, h0 in zip(c.vms, where, start, strict=True):
        alloc_c[h] += v.vcpus
        alloc_m[h] += v.memory_mib
        if v.group is not None:
            members[(v.group, h)] += 1
        if h != h0 and c.hosts[h].state != "ready":
            out.append(f"{v.name} to {c.hosts[h].name} ({c.hosts[h].state})")
    for i, host in enumerate(c.hosts):
        if (alloc_c[i] > host.vcpus or alloc_m[i] > host.memory_mib) and any(w != s and w == i for w, s in zip(
                where, start, strict=True)):
            out.append(f"{host.name} over capacity")
    for (g, h), n in members.items():
        limit = c.groups[g].limit
        if limit is not None and n > limit and any(w != s and w == h and v.group == g
                                                   for v, w, s in zip(c.vms, where, start, strict=True)):
            out.append(f"{g} over its limit on {c.hosts[h].name}")
    return out


def _start(c: Cluster) -> list[int]:
    idx = {h.name: i for i, h in enumerate(c.hosts)}
    return [idx[v.host] for v in c.vms]


@settings(max_examples=150, deadline=None)
@given(clusters(), st.data())
def test_every_move_and_exchange_changes_f_by_what_the_matrices_say(c: Cluster, data: st.DataObject) -> None:
    s = Search(c, [v.moved_at is None for v in c.vms], _start(c))
    f0 = s.value()
    mv, sw = s.moves(), s.swaps()
    for kind, delta in (("move", mv), ("swap", sw)):
        allowed = np.argwhere(np.isfinite(delta))
        if not len(allowed):
            continue
        j, x = (int(i) for i in allowed[data.draw(st.integers(0, len(allowed) - 1))])
        t = Search(c, [v.moved_at is None for v in c.vms], _start(c))
        t.apply(kind, j, x)
        fresh = Search(c, [True] * len(c.vms), t.host.tolist())  # sums recomputed from scratch
        assert abs(fresh.value() - (f0 + delta[j, x])) < 1e-9
        assert _legal(c, t.host.tolist(), _start(c)) == []


@settings(max_examples=60, deadline=None)
@given(clusters())
def test_search_keeps_the_rules_never_raises_f_and_moves_only_movable_vms(c: Cluster) -> None:
    start, movable = _start(c), [v.moved_at is None for v in c.vms]
    where = search(c, movable, start, 0.2, home=start)
    assert _legal(c, where, start) == []
    assert Search(c, movable, where).value() <= Search(c, movable, start).value() + 1e-9
    assert all(w == s for w, s, m in zip(where, start, movable, strict=True) if not m)


def test_relabel_swaps_whole_hosts_back_home() -> None:
    hosts = [BHost(f"h{i}", 8, 8192) for i in range(3)]
    vms = [BVm(f"v{i}", f"h{i % 3}", 1, 1024) for i in range(6)]
    c = Cluster(hosts, vms)
    home = _start(c)
    rotated = [(h + 1) % 3 for h in home]  # every VM moved, the same spread
    assert relabel(c, [True] * 6, home, rotated) == home
    pinned = [False] + [True] * 5  # v0 may not move: its host (h1 in `rotated`) keeps its contents
    out = relabel(c, pinned, home, rotated)
    assert out[0] == rotated[0] and out[3] == rotated[3]


def test_moves_that_change_nothing_are_not_made() -> None:
    # idle VMs (no use) on a busy host: moving them would not change the spread, so they stay home
    hosts = [BHost(f"h{i}", 16, 16384) for i in range(4)]
    vms = [BVm(f"busy{i}", "h0", 2, 1024, cpu_use=2.0, mem_use_mib=1024) for i in range(4)] + [
        BVm(f"idle{i}", "h0", 1, 1024, cpu_use=0.0, mem_use_mib=0.0) for i in range(4)]
    c = Cluster(hosts, vms)
    start = _start(c)
    where = search(c, [True] * 8, start, 0.5, home=start)
    assert [w != s for w, s in zip(where, start, strict=True)].count(True) == 3  # three busy VMs leave
    assert all(w == s for w, s, v in zip(where, start, c.vms, strict=True) if v.name.startswith("idle"))
