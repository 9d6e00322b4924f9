from __future__ import annotations

from pathlib import Path
from typing import Any

from gatekeeper.converge import Here, converge
from softudc.manager.controller import inventory, reconcile_farm
from softudc.manager.desired import host_desired
from softudc.model.farm import Farm, validate
from softudc.model.hoststate import vm_name

DEMO = (Path(__file__).parents[3] / "configs" / "farms" / "demo.yaml").read_text()
REPORTS = {f"h{i}": {"vcpus": 8, "memory_mib": 8192, "state": "ready", "running": []} for i in (1, 2, 3)}


def test_a_farm_becomes_placed_instances_and_per_host_desired_state() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, summary, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
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
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    running = {h: {**r, "running": [vm["name"] for vm in host_desired(h, [(farm, status)])["vms"]]}
               for h, r in REPORTS.items()}
    again, summary, _ = reconcile_farm(farm, status, inventory(REPORTS), {}, running)
    assert summary == "+0 -0 =4" and again["conditions"]["Ready"] is True
    def placement(st: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in i.items() if k not in ("state", "error")} for i in st["instances"]]

    assert placement(again) == placement(status) and again["vnet_ids"] == status["vnet_ids"]
    assert {i["state"] for i in status["instances"]} == {"pending"}
    assert {i["state"] for i in again["instances"]} == {"running"}


def test_a_vm_that_fails_to_start_says_why_in_the_farm_status() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    db = next(i for i in status["instances"] if i["name"] == "db-0")
    reports = {h: dict(r) for h, r in REPORTS.items()}
    reports[db["host"]]["errors"] = ["vm.start demo--db-0: no image test-guest on this host",
                                     "vm.start demo--db-10: something else"]
    after, _, _ = reconcile_farm(farm, status, inventory(REPORTS), {}, reports)
    db = next(i for i in after["instances"] if i["name"] == "db-0")
    assert db["state"] == "pending" and db["error"] == "no image test-guest on this host"
    assert after["conditions"]["Degraded"] is True


def test_converge_creates_vnets_before_vms_and_only_touches_managed_vms() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    desired = host_desired("h1", [(farm, status)])
    actions = converge(desired, Here([], [{"name": "someone-elses", "state": "running"},
                                          {"name": vm_name("demo", "gone-0"), "state": "running"}]))
    ops = [a.op for a in actions]
    assert ops.index("vnet.create") < ops.index("vm.start")
    assert [a.args["name"] for a in actions if a.op == "vm.stop"] == ["demo--gone-0"]
    # Converged: nothing left to do.
    done = converge(desired, Here([v["id"] for v in desired["vnets"]],
                                  [{"name": v["name"], "state": "running"} for v in desired["vms"]]))
    assert done == []
    # A deleted farm: its VMs stop, then the VNETs this gatekeeper made for it go.
    empty = converge({"vnets": [], "vms": []}, Here([v["id"] for v in desired["vnets"]],
                                                   [{"name": v["name"], "state": "running"} for v in desired["vms"]],
                                                   {v["id"] for v in desired["vnets"]}))
    assert [a.op for a in empty][-1] == "vnet.delete" and "vm.stop" in [a.op for a in empty]


def _running(farm: Any, status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h: {**r, "running": [vm["name"] for vm in host_desired(h, [(farm, status)])["vms"]
                                 if not vm.get("incoming")]} for h, r in REPORTS.items()}


def _move(status: dict[str, Any], instance: str, to: str, **extra: Any) -> dict[str, Any]:
    instances = [dict(i, migrating={"to": to, "attempt": "a1", "since": 0.0, **extra}) if i["name"] == instance
                 else i for i in status["instances"]]
    return {**status, "instances": instances}


def test_a_live_migration_lists_the_vm_on_both_hosts_then_moves_it_when_the_destination_runs_it() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    db = next(i for i in status["instances"] if i["name"] == "db-0")
    src, dst = db["host"], next(h for h in REPORTS if h != db["host"])
    moving = _move(status, "db-0", dst, uri=f"qemu+tcp://{dst}/system")
    # First the destination makes the VNETs; the source keeps the VM as it is until then.
    assert "migrate_to" not in next(v for v in host_desired(src, [(farm, moving)])["vms"] if v["name"] == "demo--db-0")
    reports = _running(farm, status)
    reports[dst]["prepared"] = ["demo--db-0"]
    moving, _, _ = reconcile_farm(farm, moving, inventory(REPORTS), {}, reports)
    on_src = next(v for v in host_desired(src, [(farm, moving)])["vms"] if v["name"] == "demo--db-0")
    on_dst = host_desired(dst, [(farm, moving)])
    assert on_src["migrate_to"] == {"host": dst, "uri": f"qemu+tcp://{dst}/system", "attempt": "a1",
                                    "downtime_ms": 50}
    assert any(v["name"] == "demo--db-0" and v["incoming"] for v in on_dst["vms"])
    back = next(n["vnet"] for v in on_dst["vms"] if v["name"] == "demo--db-0" for n in v["nics"])
    assert back in {v["id"] for v in on_dst["vnets"]}  # the destination gets the VNET before the VM arrives
    # The source migrates once per attempt; the destination neither starts nor stops it.
    here = Here([v["id"] for v in host_desired(src, [(farm, moving)])["vnets"]],
                [{"name": "demo--db-0", "state": "running"}])
    assert [a.op for a in converge(host_desired(src, [(farm, moving)]), here) if "db-0" in str(a)] == ["vm.migrate"]
    here.attempts["demo--db-0"] = "a1"
    assert not [a for a in converge(host_desired(src, [(farm, moving)]), here) if "db-0" in str(a)]
    dst_here = Here([v["id"] for v in on_dst["vnets"]], [{"name": "demo--db-0", "state": "paused"}])
    assert not [a for a in converge(on_dst, dst_here) if "db-0" in str(a)]
    # Still copying: nothing moves; the progress shows in the status.
    reports = _running(farm, status)
    reports[src]["migrations"] = {"demo--db-0": {"attempt": "a1", "state": "copying", "data_processed": 5}}
    still, _, events = reconcile_farm(farm, moving, inventory(REPORTS), {}, reports)
    db = next(i for i in still["instances"] if i["name"] == "db-0")
    assert db["host"] == src and db["migrating"]["data_processed"] == 5 and events == []
    # Done: it runs on the destination and the source says completed.
    reports[src]["migrations"]["demo--db-0"] = {"attempt": "a1", "state": "completed", "wall_ms": 600}
    reports[dst]["running"].append("demo--db-0")
    reports[dst]["arrivals"] = {"demo--db-0": {"downtime_ms": 30}}
    done, _, events = reconcile_farm(farm, still, inventory(REPORTS), {}, reports)
    db = next(i for i in done["instances"] if i["name"] == "db-0")
    assert db["host"] == dst and "migrating" not in db
    assert events == [("Migrated", f"db-0: {src} -> {dst} live, copied in 600 ms, downtime 30 ms")]


def _report_again(reports: dict[str, dict[str, Any]], host: str, **fields: Any) -> None:
    """`host` reports once more (the manager stamps each report with the time it stored it)."""
    reports[host] = {**reports[host], **fields, "reported": reports[host].get("reported", 100.0) + 1.0}


def _db_placed() -> tuple[Farm, dict[str, Any], str, str, dict[str, dict[str, Any]]]:
    """The demo farm placed and running: (farm, status, db-0's host, another host, the reports,
    each stamped and listing its domains)."""
    farm = validate(DEMO, "demo.yaml")
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    src = next(i["host"] for i in status["instances"] if i["name"] == "db-0")
    dst = next(h for h in REPORTS if h != src)
    reports = {h: {**r, "reported": 100.0, "sizes": {v: [1, 128] for v in r["running"]}}
               for h, r in _running(farm, status).items()}
    return farm, status, src, dst, reports


def test_a_failed_migration_leaves_the_vm_where_it_was_and_says_why() -> None:
    """R12: the failure is said at once, but `migrating` ends only on the destination's fresh word
    that it holds no copy (a report built after the failure: the second one stored after it)."""
    farm, status, src, dst, reports = _db_placed()
    reports[src]["migrations"] = {"demo--db-0": {"attempt": "a1", "state": "failed", "error": "no route"}}
    after, _, events = reconcile_farm(farm, _move(status, "db-0", dst, uri="x", prepared=True), inventory(REPORTS),
                                      {}, reports)
    db = next(i for i in after["instances"] if i["name"] == "db-0")
    assert db["host"] == src and db["migrating"]["state"] == "failed" and db["migrating"]["error"] == "no route"
    assert events[0][0] == "MigrationFailed" and "no route" in events[0][1] and f"until {dst} confirms" in events[0][1]
    after, _, _ = reconcile_farm(farm, after, inventory(REPORTS), {}, reports)  # no new report: no evidence
    assert next(i for i in after["instances"] if i["name"] == "db-0").get("migrating")
    _report_again(reports, dst)  # the first report stored after the failure may have been built before it
    after, _, events = reconcile_farm(farm, after, inventory(REPORTS), {}, reports)
    assert next(i for i in after["instances"] if i["name"] == "db-0").get("migrating")
    _report_again(reports, dst)
    after, _, events = reconcile_farm(farm, after, inventory(REPORTS), {}, reports)
    db = next(i for i in after["instances"] if i["name"] == "db-0")
    assert db["host"] == src and "migrating" not in db
    assert events == [("MigrationFailed", f"db-0: {src} -> {dst}: no route; {dst} holds no copy, so it keeps "
                                          f"running on {src}")]
    # A failure record of an older attempt does not end a new one.
    reports[src]["migrations"]["demo--db-0"]["attempt"] = "old"
    after, _, events = reconcile_farm(farm, _move(status, "db-0", dst, uri="x"), inventory(REPORTS), {}, reports)
    assert next(i for i in after["instances"] if i["name"] == "db-0").get("migrating") and events == []


def test_a_vm_that_crashed_on_arrival_moves_to_the_destination_which_starts_it_again() -> None:
    """The source says completed, no host runs it, the destination holds it shut off (a guest that
    panicked in its first ticks there): once the destination's word is fresh, the instance is the
    destination's and its gatekeeper starts it; before, it waited for an arrival forever."""
    farm, status, src, dst, reports = _db_placed()
    reports[src]["running"].remove("demo--db-0")
    del reports[src]["sizes"]["demo--db-0"]  # undefined there by the completed migration
    reports[src]["migrations"] = {"demo--db-0": {"attempt": "a1", "state": "completed", "wall_ms": 600}}
    reports[dst]["sizes"]["demo--db-0"] = [1, 128]  # defined, not running
    moving = _move(status, "db-0", dst, uri="x", prepared=True, state="copying")
    events: list[tuple[str, str]] = []
    for _ in range(2):  # the first report stored after the completion may have been built before it
        moving, _, events = reconcile_farm(farm, moving, inventory(REPORTS), {}, reports)
        assert next(i for i in moving["instances"] if i["name"] == "db-0")["host"] == src and not events
        _report_again(reports, dst)
    after, _, events = reconcile_farm(farm, moving, inventory(REPORTS), {}, reports)
    db = next(i for i in after["instances"] if i["name"] == "db-0")
    assert db["host"] == dst and "migrating" not in db
    assert events == [("Migrated", f"db-0: {src} -> {dst} live, but demo--db-0 was not running on {dst} when it "
                                   f"reported (it stopped or crashed on arrival: see its console log there); "
                                   f"{dst} starts it again")]
    on_dst = host_desired(dst, [(farm, after)])
    here = Here([v["id"] for v in on_dst["vnets"]], [{"name": "demo--db-0", "state": "shutoff"}])
    assert [a.op for a in converge(on_dst, here) if a.args.get("name") == "demo--db-0"] == ["vm.start"]


def test_r5_a_vm_found_running_elsewhere_stays_with_its_host_and_a_cold_move_waits_for_a_fresh_stop() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    src = next(i["host"] for i in status["instances"] if i["name"] == "db-0")
    dst = next(h for h in REPORTS if h != src)
    reports = _running(farm, status)
    reports[src]["running"].remove("demo--db-0")
    reports[dst]["running"].append("demo--db-0")
    after, _, events = reconcile_farm(farm, status, inventory(REPORTS), {}, reports)
    db = next(i for i in after["instances"] if i["name"] == "db-0")
    assert db["host"] == src and db["unexpected"] == [dst]  # R5: not adopted
    assert [e[0] for e in events] == ["UnexpectedVM"] and "migrate it there" in events[0][1]
    again, _, events = reconcile_farm(farm, after, inventory(REPORTS), {}, reports)
    assert events == []  # said once, not at every report
    assert "demo--db-0" not in [v["name"] for v in host_desired(dst, [(farm, again)])["vms"]]  # so dst stops it
    # Cold: on no host while it stops; it moves only once the source has freshly reported no such domain.
    cold = _move(status, "db-0", dst, cold=True)
    assert all("demo--db-0" not in [v["name"] for v in host_desired(h, [(farm, cold)])["vms"]] for h in REPORTS)
    reports = {h: {**r, "reported": 100.0, "sizes": {v: [1, 128] for v in r["running"]}}
               for h, r in _running(farm, status).items()}
    waiting, _, _ = reconcile_farm(farm, cold, inventory(REPORTS), {}, reports)
    assert next(i for i in waiting["instances"] if i["name"] == "db-0")["host"] == src
    reports[src]["running"].remove("demo--db-0")  # shut down, still defined: not gone yet
    for _ in range(3):  # however often it reports
        _report_again(reports, src)
        waiting, _, _ = reconcile_farm(farm, waiting, inventory(REPORTS), {}, reports)
        assert next(i for i in waiting["instances"] if i["name"] == "db-0")["host"] == src
    del reports[src]["sizes"]["demo--db-0"]  # undefined
    _report_again(reports, src)
    moved, _, events = reconcile_farm(farm, waiting, inventory(REPORTS), {}, reports)
    assert next(i for i in moved["instances"] if i["name"] == "db-0")["host"] == dst and events[0][0] == "Migrated"


def test_a_resized_vm_keeps_running_and_its_status_says_the_new_size_waits_for_a_restart() -> None:
    farm = validate(DEMO, "demo.yaml")
    status, _, _ = reconcile_farm(farm, {}, inventory(REPORTS), {}, REPORTS)
    reports = _running(farm, status)
    for r in reports.values():
        r["sizes"] = {vm: [1, 128] for vm in r["running"]}
    same, _, _ = reconcile_farm(farm, status, inventory(REPORTS), {}, reports)
    assert not any("change" in i for i in same["instances"])
    bigger = validate(DEMO.replace("memory: 128Mi\n      image: test-guest\n      placementGroup",
                                   "memory: 256Mi\n      image: test-guest\n      placementGroup"), "demo.yaml")
    after, summary, _ = reconcile_farm(bigger, status, inventory(REPORTS), {}, reports)
    assert summary == "+0 -0 =4"  # nothing is recreated behind the admin's back
    changes = {i["name"]: i.get("change") for i in after["instances"]}
    later = "memory 128Mi -> 256Mi after a stop and start"
    assert changes == {"db-0": None, "web-0": later, "web-1": later, "web-2": later}
