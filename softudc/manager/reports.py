"""What a gatekeeper's report may hold and who may see which part of it: every field and nested
value checked against the contract (softudc/model/hoststate.py HostReport) before anything is
stored (one broken host must not break planning for every farm, audit R10), and an allow-list of
what a non-admin sees, filtered by farm (R24)."""

from __future__ import annotations

import ipaddress
from typing import Any

from softudc.manager.auth import Principal
from softudc.model.hoststate import HostReport, problems_of, split_vm_name


def report_problems(body: dict[str, Any]) -> list[str]:
    """Everything wrong with a gatekeeper's report, each named (at most 50). Unknown fields are
    refused for the contract version the report claims (absent: 1, today's gatekeepers), so a
    field only a newer gatekeeper sends says to upgrade the managers first."""
    return problems_of(HostReport, body)


def ipv4_or_none(text: Any) -> str | None:
    """`text` if it is an IPv4 address (a report's `underlay`), else None."""
    try:
        return str(ipaddress.IPv4Address(text)) if isinstance(text, str) else None
    except ValueError:
        return None


# What a host's report shows to non-admins (audit R24): an allow-list. Fields keyed by VM name are
# cut to the VMs of farms the caller may read; everything else (errors, notes, the migration URI,
# fields added later) is for admins only.
VM_LISTS = ("running", "prepared")
VM_MAPS = ("sizes", "migrations", "arrivals")
PUBLIC_FIELDS = ("vcpus", "memory_mib", "state", "reported")


def visible_to(who: Principal, report: dict[str, Any]) -> dict[str, Any]:
    """A host's report as `who` may see it: an admin all of it; others the allow-listed fields,
    with only the VMs of farms they may read (ownership from the exact `<farm>--<instance>`)."""
    if who.role == "admin":
        return dict(report)

    def mine(vm: Any) -> bool:
        owner = split_vm_name(vm) if isinstance(vm, str) else None
        return owner is not None and who.can_read(owner[0])

    out: dict[str, Any] = {k: report[k] for k in PUBLIC_FIELDS if k in report}
    out.update({k: [v for v in report.get(k, []) if mine(v)] for k in VM_LISTS})
    out.update({k: {vm: v for vm, v in report.get(k, {}).items() if mine(vm)} for k in VM_MAPS})
    return out
