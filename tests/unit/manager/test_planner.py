from __future__ import annotations

from pathlib import Path

from softudc.manager.planner import Instance, allocate_vnet_ids, plan_farm
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
