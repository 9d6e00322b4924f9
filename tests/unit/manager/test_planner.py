from __future__ import annotations

from pathlib import Path

from softudc.manager.planner import Instance, allocate_vnet_ids, move_fit, plan_farm
from softudc.model.farm import validate
from softudc.placement import Host

DEMO = (Path(__file__).parents[3] / "configs" / "farms" / "demo.yaml").read_text()


def hosts(n: int = 3) -> list[Host]:
    return [Host(f"h{i + 1}", 8, 8192) for i in range(n)]


def test_demo_farm_plan_spreads_web_and_allocates_addresses() -> None:
    farm = validate(DEMO, "demo.yaml")
    plan = plan_farm(farm, hosts(), [])
    web = [i for i in plan.create if i.vm == "web"]
    assert sorted(i.name for i in web) == ["web-0", "web-1", "web-2"]
    assert len({i.host for i in web}) == 3  # anti-affinity, one per host
    assert sorted(i.addresses["front"] for i in web) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    db = next(i for i in plan.create if i.vm == "db")
    assert db.addresses == {"back": "10.0.0.20"}  # the static one
    assert set(plan.vnet_ids) == {"front", "back"} and len(set(plan.vnet_ids.values())) == 2
    assert "web-0" in plan.render() and plan.changes


def test_scaling_two_to_three_creates_exactly_one_and_keeps_the_rest() -> None:
    farm = validate(DEMO.replace("replicas: 3", "replicas: 2"), "demo.yaml")
    first = plan_farm(farm, hosts(), [])
    current = first.create
    bigger = validate(DEMO, "demo.yaml")
    second = plan_farm(bigger, hosts(), current, {("demo", k): v for k, v in first.vnet_ids.items()})
    assert [i.name for i in second.create] == ["web-2"]
    assert sorted(i.name for i in second.keep) == sorted(i.name for i in current)
    assert not second.delete
    assert second.create[0].addresses["front"] not in {i.addresses.get("front") for i in current}
    assert second.vnet_ids == first.vnet_ids
    # Re-applying the same farm changes nothing.
    again = plan_farm(bigger, hosts(), current + second.create, {("demo", k): v for k, v in first.vnet_ids.items()})
    assert not again.changes and "no changes" in again.render()


def test_removing_a_vm_deletes_only_its_instances() -> None:
    farm = validate(DEMO, "demo.yaml")
    first = plan_farm(farm, hosts(), [])
    without_db = DEMO.split("    - name: db")[0]
    plan = plan_farm(validate(without_db, "demo.yaml"), hosts(), first.create)
    assert [i.name for i in plan.delete] == ["db-0"] and not plan.create


def test_anti_affinity_that_cannot_hold_is_explained() -> None:
    plan = plan_farm(validate(DEMO, "demo.yaml"), hosts(2), [])
    assert len(plan.unplaced) == 1
    (why,) = plan.unplaced.values()
    assert any("anti-affinity group web-spread" in w for w in why)


def test_vnet_ids_are_stable_and_skip_the_physical_network() -> None:
    farm = validate(DEMO, "demo.yaml")
    ids = allocate_vnet_ids(farm, {("other", "x"): 2})
    assert 1 not in ids.values() and 2 not in ids.values()
    assert allocate_vnet_ids(farm, {("demo", k): v for k, v in ids.items()}) == ids
    assert Instance("a", "a", "h1")


def test_a_move_is_admitted_by_the_planners_rules() -> None:
    """Migration admission (move_fit) charges the farm's instances as plan_farm does and places the
    move like a new instance: group rules, capacity, moves already under way."""
    farm = validate(DEMO, "demo.yaml")
    current = plan_farm(farm, hosts(5), []).create
    where = {i.name: i.host for i in current}
    free = next(h.name for h in hosts(5) if h.name not in where.values())
    other_web = where["web-1"]
    assert move_fit(farm, hosts(5), current, "web-0", free) == []
    why = move_fit(farm, hosts(5), current, "web-0", other_web)
    assert why and "web-spread" in " ".join(why)  # anti-affinity: one web per host
    tiny = [h if h.name != free else Host(free, 8, 100) for h in hosts(5)]
    assert "memory" in " ".join(move_fit(farm, tiny, current, "db-0", free))
    # A move under way takes room at its destination: a second one there is counted against it.
    moving = [i if i.name != "web-2" else Instance(i.name, i.vm, i.host, i.addresses, {"to": free}) for i in current]
    assert "web-spread" in " ".join(move_fit(farm, hosts(5), moving, "web-0", free))
    assert move_fit(farm, hosts(5), current, "web-0", "h9") == ["h9 has not reported its capacity"]
    assert move_fit(farm, hosts(5), current, "web-7", free) == ["web-7 is not in farm demo's descriptor"]
