from hypothesis import given, settings

from softudc.placement.cluster import BHost, BVm, Cluster
from softudc.placement.exact import Exact, solve
from softudc.placement.model import Group
from softudc.placement.score import score
from tests.unit.placement.test_balance import clusters
from tests.unit.placement.test_localsearch import _legal, _start


def test_no_move_when_no_placement_keeps_the_rules() -> None:
    hosts = [BHost("h0", 8, 8192, "draining"), BHost("h1", 2, 2048)]
    c = Cluster(hosts, [BVm("big", "h0", 4, 1024)])
    assert solve(c, [True], _start(c)) == {}  # it must leave h0 and fits nowhere: stays
    down = Cluster([BHost("h0", 8, 8192, "down")], [BVm("v", "h0", 1, 1024)])
    assert solve(down, [True], _start(down)) is None


def test_the_fewest_moves_at_the_best_spread() -> None:
    # four equal VMs on h0 of four equal hosts: one each is best, three moves reach it
    hosts = [BHost(f"h{i}", 8, 8192) for i in range(4)]
    c = Cluster(hosts, [BVm(f"v{i}", "h0", 2, 1024, cpu_use=2.0) for i in range(4)])
    moves = solve(c, [True] * 4, _start(c), exact=Exact(seconds=2.0))
    assert moves is not None and len(moves) == 3 and sorted(moves.values()) == [1, 2, 3]


def test_hosts_of_different_shapes_balance_by_normalised_use() -> None:
    hosts = [BHost("small", 4, 4096), BHost("big", 12, 12288)]
    vms = [BVm(f"v{i}", "small", 1, 1024, cpu_use=1.0, mem_use_mib=1024, group="g" if i < 2 else None)
           for i in range(4)]
    c = Cluster(hosts, vms, {"g": Group("g", "anti-affinity", 1)})
    moves = solve(c, [True] * 4, _start(c), exact=Exact(seconds=2.0))
    # 4 VMs, capacity 1:3 -> one on small, three on big, spread 0; anti-affinity keeps a g member on each
    assert moves is not None and len(moves) == 3
    after = c.moved({c.vms[j].name: c.hosts[h].name for j, h in moves.items()})
    assert score(after).total < 1e-9


@settings(max_examples=40, deadline=None)
@given(clusters())
def test_solutions_keep_every_hard_rule_and_move_only_movable_vms(c: Cluster) -> None:
    movable = [v.moved_at is None and v.group != "f" for v in c.vms]
    start = _start(c)
    moves = solve(c, movable, start, exact=Exact(seconds=0.3))
    if moves is None:
        return
    where = [moves.get(j, h) for j, h in enumerate(start)]
    assert _legal(c, where, start) == []
    assert all(j not in moves for j, m in enumerate(movable) if not m)
