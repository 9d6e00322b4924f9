from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.placement import Group, Host, Request, check, place, place_ffd


def hosts(n: int, vcpus: int = 8, mem: int = 8192) -> list[Host]:
    return [Host(f"h{i + 1}", vcpus, mem) for i in range(n)]


def test_spreads_and_says_why() -> None:
    hs = hosts(3)
    plan = place(hs, [Request(f"web-{i}", 1, 1024) for i in range(3)])
    assert sorted(s.host for s in plan.steps) == ["h1", "h2", "h3"]
    assert all("most free capacity" in s.reason for s in plan.steps)


def test_anti_affinity_holds_and_an_impossible_request_is_explained_per_host() -> None:
    hs = hosts(2)
    hs[1].state = "draining"
    plan = place(hs, [Request(f"web-{i}", 1, 1024, "spread") for i in range(2)], [Group("spread", "anti-affinity")])
    assert plan.placed == 1
    (why,) = plan.unplaced.values()
    assert "h1: anti-affinity group spread already has 1 member(s) here (max 1)" in why
    assert "h2: draining" in why


def test_memory_shortage_names_the_numbers() -> None:
    hs = hosts(1, mem=4096)
    hs[0].used_memory_mib = 512
    plan = place(hs, [Request("db-0", 1, 4096)])
    assert plan.unplaced["db-0"] == ["h1: memory 3.5Gi free < 4.0Gi"]


def test_affinity_keeps_a_group_together() -> None:
    plan = place(hosts(4), [Request(f"c-{i}", 1, 512, "pair") for i in range(3)], [Group("pair", "affinity")])
    assert len({s.host for s in plan.steps}) == 1


def test_soft_anti_affinity_doubles_up_only_when_it_must() -> None:
    plan = place(hosts(2), [Request(f"w-{i}", 1, 512, "s") for i in range(3)], [Group("s", "soft-anti-affinity")])
    assert plan.placed == 3 and len({s.host for s in plan.steps}) == 2


def test_cpu_overcommit() -> None:
    plan = place(hosts(1, vcpus=2), [Request(f"v-{i}", 2, 256) for i in range(5)], cpu_ratio=4.0)
    assert plan.placed == 4 and "vCPUs 0 free < 2" in plan.unplaced["v-4"][0]


@settings(max_examples=60)
@given(st.integers(1, 20), st.integers(1, 120), st.integers(0, 2**32))
def test_no_plan_ever_violates_capacity_or_groups(n_hosts: int, n_vms: int, seed: int) -> None:
    rng = random.Random(seed)
    groups = [Group("g0", "anti-affinity", 1), Group("g1", "anti-affinity", 2), Group("g2", "affinity"),
              Group("g3", "soft-anti-affinity")]
    reqs = [Request(f"vm-{i}", rng.choice([1, 2, 4]), rng.choice([512, 1024, 2048, 4096]),
                    rng.choice([None, None, "g0", "g1", "g2", "g3"])) for i in range(n_vms)]
    shapes = [(rng.choice([4, 8]), rng.choice([8192, 16384])) for _ in range(n_hosts)]
    # The first-fit baseline knows capacity and anti-affinity, not affinity.
    plain = [Request(r.name, r.vcpus, r.memory_mib, None if r.group == "g2" else r.group) for r in reqs]
    for algo, rs in ((place, reqs), (place_ffd, plain)):
        hs = [Host(f"h{i}", c, m) for i, (c, m) in enumerate(shapes)]
        fresh = [Host(f"h{i}", c, m) for i, (c, m) in enumerate(shapes)]
        plan = algo(hs, rs, groups)
        assert check(fresh, rs, groups, plan) == 0, (algo.__name__, plan)
        assert plan.placed + len(plan.unplaced) == n_vms


@pytest.mark.parametrize("algo", [place, place_ffd])
def test_unplaceable_requests_are_reported_not_dropped(algo: object) -> None:
    plan = algo(hosts(1, mem=1024), [Request("big", 1, 4096)])  # type: ignore[operator]
    assert plan.placed == 0 and "big" in plan.unplaced
