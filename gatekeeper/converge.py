"""What a gatekeeper must do to turn what it runs into what the manager wants. Pure: actions
out, the agent carries them out (and reports what it could not do).

Order matters: VNETs exist before VMs plug into them; VMs stop before their VNETs go. Only VMs
named `<farm>--<instance>` are the manager's; anything else on the host is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MANAGED = "--"


@dataclass(frozen=True)
class Action:
    op: str  # vnet.create | vm.start | vm.stop | vnet.delete
    args: dict[str, Any]

    def __str__(self) -> str:
        what = self.args.get("name", self.args.get("vnet"))
        return f"{self.op} {what}"


def converge(desired: dict[str, Any], vnets_here: list[int], vms_here: list[dict[str, Any]],
             managed_vnets: set[int]) -> list[Action]:
    """`managed_vnets`: VNET ids this gatekeeper created for the manager (others are left alone)."""
    want_vnets = {v["id"]: v for v in desired.get("vnets", [])}
    want_vms = {v["name"]: v for v in desired.get("vms", [])}
    have_vms = {v["name"]: v for v in vms_here}
    actions: list[Action] = []
    for vid, v in sorted(want_vnets.items()):
        if vid not in vnets_here:
            actions.append(Action("vnet.create", {"vnet": vid, "security": v.get("security", "none")}))
    for name, vm in sorted(want_vms.items()):
        have = have_vms.get(name)
        if have is None or have.get("state") not in ("running", "paused"):
            actions.append(Action("vm.start", {"name": name, "vcpus": vm["vcpus"], "memory_mib": vm["memory_mib"],
                                               "nics": vm["nics"]}))
    for name in sorted(have_vms):
        if MANAGED in name and name not in want_vms:
            actions.append(Action("vm.stop", {"name": name, "force": True}))
    for vid in sorted(managed_vnets - set(want_vnets)):
        if vid in vnets_here:
            actions.append(Action("vnet.delete", {"vnet": vid}))
    return actions
