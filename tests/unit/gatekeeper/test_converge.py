"""converge and its restart helpers as a gatekeeper runs them, on hand-written desired states (the
manager's side of the same pipeline is in tests/unit/manager/test_controller.py)."""

from __future__ import annotations

from gatekeeper.converge import Here, converge


def test_a_vnet_the_manager_no_longer_needs_stays_while_something_else_is_plugged_into_it() -> None:
    vm = {"name": "demo--web-2", "state": "running", "nics": [{"vnet": 2, "mac": "52:54:00:00:00:01", "tap": "vnet0"}]}
    gone = converge({"vnets": [], "vms": []}, Here([2], [vm], {2}, ports={2: ["vnet0"]}))
    assert [a.op for a in gone] == ["vm.stop", "vnet.delete"]  # only the leaving VM's TAP
    kept = converge({"vnets": [], "vms": []}, Here([2], [vm], {2}, ports={2: ["vnet0", "ep-admin"]}))
    assert [(a.op, a.args.get("ports")) for a in kept] == [("vm.stop", None), ("vnet.keep", ["ep-admin"])]
