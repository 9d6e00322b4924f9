import pytest

from softudc.placement.cluster import BHost, BVm, Cluster
from softudc.placement.model import Group
from softudc.placement.score import PENALTY, score


def test_balanced_cluster_has_zero_spread() -> None:
    c = Cluster([BHost("h1", 4, 4096), BHost("h2", 4, 4096)], [BVm("a", "h1", 2, 1024), BVm("b", "h2", 2, 1024)])
    assert score(c).total == pytest.approx(0.0)


def test_spread_is_root_of_summed_variances() -> None:
    c = Cluster([BHost("h1", 4, 4096), BHost("h2", 4, 4096)], [BVm("a", "h1", 2, 2048)])
    b = score(c)
    assert b.spread_cpu == pytest.approx(0.25) and b.spread_mem == pytest.approx(0.25)
    assert b.total == pytest.approx((0.25 ** 2 * 2) ** 0.5)


def test_penalties_name_what_breaks() -> None:
    hosts = [BHost("h1", 2, 4096), BHost("h2", 4, 4096, "draining")]
    vms = [BVm("a", "h1", 2, 1024, group="g"), BVm("b", "h1", 2, 1024, group="g"), BVm("c", "h2", 1, 512)]
    b = score(Cluster(hosts, vms, {"g": Group("g", "anti-affinity", 1)}))
    assert b.off_ready == ["c@h2 (draining)"]
    assert b.anti_affinity == ["g@h1: 2 > 1"]
    assert b.over_capacity == ["h1: cpu 4/2 mem 2048/4096"]
    assert b.over_excess == pytest.approx(1.0)
    assert b.total == pytest.approx(b.spread + PENALTY * 4)
    text = str(b)
    assert "spread cpu" in text and "c@h2 (draining)" in text and "anti-affinity broken x1" in text
