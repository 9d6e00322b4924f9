from __future__ import annotations

from pathlib import Path

from gatekeeper.converge import converge
from softudc.manager.controller import host_desired, inventory, reconcile_farm, vm_name
from softudc.model.farm import validate

DEMO = (Path(__file__).parents[3] / "configs" / "farms" / "demo.yaml").read_text()
REPORTS = {f"h{i}": {"vcpus": 8, "memory_mib": 8192, "state": "ready", "running": []} for i in (1, 2, 3)}


def test_a_farm_becomes_placed_instances_and_per_host_desired_state() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, summary = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    assert summary == "+4 -0 =0"
    assert status["conditions"] == {"Placed": True, "Ready": False, "Degraded": True}  # not running yet
    per_host = {h: host_desired(h, [(farm, status)]) for h in REPORTS}
    names = sorted(vm["name"] for d in per_host.values() for vm in d["vms"])
    assert names == ["demo--db-0", "demo--web-0", "demo--web-1", "demo--web-2"]
    webs = [h for h, d in per_host.items() if any(v["name"].startswith("demo--web") for v in d["vms"])]
    assert len(webs) == 3  # anti-affinity
    for d in per_host.values():  # every host has exactly the VNETs its VMs use
        assert {n["vnet"] for vm in d["vms"] for n in vm["nics"]} == {v["id"] for v in d["vnets"]}


def test_ready_once_every_instance_runs_and_reapply_changes_nothing() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    running = {h: {**r, "running": [vm["name"] for vm in host_desired(h, [(farm, status)])["vms"]]}
               for h, r in REPORTS.items()}
    again, summary = reconcile_farm(farm, status, inventory(REPORTS), {}, running)
    assert summary == "+0 -0 =4" and again["conditions"]["Ready"] is True
    assert again["instances"] == status["instances"] and again["vnet_ids"] == status["vnet_ids"]


def test_converge_creates_vnets_before_vms_and_only_touches_managed_vms() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    desired = host_desired("h1", [(farm, status)])
    actions = converge(desired, [], [{"name": "someone-elses", "state": "running"},
                                     {"name": vm_name("demo", "gone-0"), "state": "running"}], set())
    ops = [a.op for a in actions]
    assert ops.index("vnet.create") < ops.index("vm.start")
    assert [a.args["name"] for a in actions if a.op == "vm.stop"] == ["demo--gone-0"]
    # Converged: nothing left to do.
    done = converge(desired, [v["id"] for v in desired["vnets"]],
                    [{"name": v["name"], "state": "running"} for v in desired["vms"]], set())
    assert done == []
    # A deleted farm: its VMs stop, then the VNETs this gatekeeper made for it go.
    empty = converge({"vnets": [], "vms": []}, [v["id"] for v in desired["vnets"]],
                     [{"name": v["name"], "state": "running"} for v in desired["vms"]],
                     {v["id"] for v in desired["vnets"]})
    assert [a.op for a in empty][-1] == "vnet.delete" and "vm.stop" in [a.op for a in empty]
