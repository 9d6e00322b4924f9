"""What a gatekeeper's report may hold and who may see which part of it: every field and nested
value checked before anything is stored (one broken host must not break planning for every farm,
audit R10), and an allow-list of what a non-admin sees, filtered by farm (R24)."""

from __future__ import annotations

import ipaddress
from typing import Any

from softudc.manager.auth import Principal
from softudc.manager.controller import split_vm_name

REPORT_FIELDS: dict[str, tuple[type, type | None]] = {
    # field: (type, type of its items or values)
    "vcpus": (int, None), "memory_mib": (int, None), "state": (str, None), "migration_uri": (str, None),
    "running": (list, str), "errors": (list, str), "notes": (list, str), "prepared": (list, str),
    "migrations": (dict, dict), "arrivals": (dict, dict), "sizes": (dict, list),
    "departed": (dict, dict),  # VMs that left by migration, not restarted there by itself (audit R12)
    "underlay": (str, None),  # the host's underlay address: VNET member lists (audit R18)
    "vnets": (list, int),  # the VNET ids the host carries (an admin's port kept one): members too
    "dataplane": (dict, None),  # forwarding threads: {workers: {name: state}, restarts, healthy} (audit R2)
}


def ipv4_or_none(text: Any) -> str | None:
    """`text` if it is an IPv4 address (a report's `underlay`), else None."""
    try:
        return str(ipaddress.IPv4Address(text)) if isinstance(text, str) else None
    except ValueError:
        return None


def _exactly(value: Any, kind: type) -> bool:
    return type(value) is kind  # bool is no int here


# The inner shapes of the report fields the manager reads (audit R10): every value is checked, so
# nothing in a stored report can raise later in planning. Keys not listed here pass (newer
# gatekeepers may add some) and are never read. A type tuple lists what is allowed; None: null.
_NUMBER = (int, float)
REPORT_ENTRIES: dict[str, dict[str, tuple[type | None, ...]]] = {
    "migrations": {"attempt": (str,), "to": (str,), "state": (str,), "error": (str, None), "started": _NUMBER,
                   "ended": _NUMBER, "wall_ms": (*_NUMBER, None), "data_total": (*_NUMBER, None),
                   "data_processed": (*_NUMBER, None), "recovered": (bool,)},
    "arrivals": {"downtime_ms": (*_NUMBER, None), "total_ms": (*_NUMBER, None), "data_total": (*_NUMBER, None),
                 "error": (str, None)},
    "departed": {"attempt": (str,), "to": (str,), "ago_s": (*_NUMBER, None)},
}


def _is(value: Any, kinds: tuple[type | None, ...]) -> bool:
    return any(value is None if k is None else type(value) is k for k in kinds)  # bool is no int here


def _entry_problems(key: str, vm: str, entry: Any) -> list[str]:
    """An entry of a VM-keyed field: `sizes` [vCPUs, MiB] (null when unknown), or a mapping."""
    if key == "sizes":
        if type(entry) is not list or len(entry) != 2 or \
                not all(v is None or (type(v) is int and v > 0) for v in entry):
            return [f"sizes.{vm}: {entry!r}, expected [vCPUs, memory MiB] (positive integers or null)"]
        return []
    fields = REPORT_ENTRIES.get(key)
    if fields is None:
        return []
    return [f"{key}.{vm}.{f}: {entry[f]!r}, expected {' or '.join('null' if k is None else k.__name__ for k in kinds)}"
            for f, kinds in fields.items() if f in entry and not _is(entry[f], kinds)]


def report_problems(body: dict[str, Any]) -> list[str]:
    """Everything wrong with a gatekeeper's report, each named (unknown fields pass: newer
    gatekeepers may add some)."""
    problems = []
    for key, (kind, inner) in REPORT_FIELDS.items():
        if key not in body:
            continue
        value: Any = body[key]
        if not _exactly(value, kind):
            problems.append(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
            continue
        if kind is int and value <= 0:
            problems.append(f"{key}: {value} must be positive")
        if inner is None:
            continue
        entries = value.items() if isinstance(value, dict) else enumerate(value)
        bad = [f"{key}[{k!r}]" for k, v in entries if not _exactly(v, inner)]
        if bad:
            problems.append(f"{key}: every entry must be a {inner.__name__}, not " + ", ".join(bad[:5]) +
                            (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
        elif isinstance(value, dict):
            problems.extend(p for vm, entry in value.items() for p in _entry_problems(key, vm, entry))
    return problems[:50]  # the first fifty say enough


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
