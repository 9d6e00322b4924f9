"""What a gatekeeper must do to turn what it runs into what the manager wants. Pure: the
contract's DesiredState (softudc/model/hoststate.py) in, actions out; the agent carries them out
(and reports what it could not do).

Order matters: VNETs exist before VMs plug into them; VMs stop before their VNETs go. Only VMs
named `<farm>--<instance>` are the manager's; anything else on the host is left alone.

Migrations: the manager lists a moving instance on the destination with `incoming` (its VNETs
are made, the VM is neither started nor stopped there); once the destination reports it
`prepared`, on the source with `migrate_to` (the destination's libvirt URI and an attempt id).
The source starts the migration once per attempt. A VM that left by migration (completed, or
ended in an error with the VM no longer running here) is never restarted here by this host's own
judgement: a copy may run at the destination. Only the manager's explicit `restart_departed` for
that attempt (it says so once the destination has reported holding no copy) starts it again.

Stopping: a VM the manager listed here before (a farm deleted, an instance removed, a cold move)
is shut down gracefully (`force` False: ACPI, destroyed after a grace period); one it never told
this host to run is destroyed at once (a stray or second copy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from softudc.model.hoststate import DesiredState, DesiredVm, DesiredVnet, is_managed, parse
from softudc.security.keys import keys_fingerprint


@dataclass(frozen=True)
class Action:
    op: str  # vnet.create | vm.start | vm.wait | vm.migrate | vm.stop | vnet.delete | vnet.keep
    args: dict[str, Any]

    def __str__(self) -> str:
        what = self.args.get("name", self.args.get("vnet"))
        return f"{self.op} {what}"


@dataclass
class Here:
    """What this host runs, as the converge step needs to know it."""

    vnets: list[int]
    vms: list[dict[str, Any]]
    managed_vnets: set[int] = field(default_factory=set)  # VNETs created for the manager
    attempts: dict[str, str] = field(default_factory=dict)  # VM -> migration attempt already started
    departed: dict[str, str] = field(default_factory=dict)  # VM -> the migration attempt it left by
    ports: dict[int, list[str]] = field(default_factory=dict)  # VNET -> interfaces plugged into it
    vnet_info: dict[int, dict[str, Any]] = field(default_factory=dict)  # VNET -> what `vnet.list` says of it
    underlay: str | None = None  # this host's underlay address (not listed among a VNET's members here)
    told: set[str] = field(default_factory=set)  # VMs the manager listed here before (stopped gracefully)


def converge(desired: DesiredState | Mapping[str, Any], here: Here) -> list[Action]:
    """The actions that make `here` what `desired` says (a mapping is validated first: ContractError
    names what is wrong with it, and nothing is done)."""
    state = desired if isinstance(desired, DesiredState) else parse(DesiredState, desired)
    want_vnets = {v.id: v for v in state.vnets}
    want_vms = {v.name: v for v in state.vms}
    have_vms = {v["name"]: v for v in here.vms}
    actions = _vnet_actions(want_vnets, here)
    actions += [a for _, vm in sorted(want_vms.items()) if (a := _vm_action(vm, have_vms.get(vm.name), here))]
    leaving, stopping, stops = _stops(set(want_vms), have_vms, here)
    return actions + stops + _vnet_removals(set(want_vnets), here, leaving, stopping)


def _vnet_actions(want: dict[int, DesiredVnet], here: Here) -> list[Action]:
    """VNETs to make, or to change where the manager's differ from this host's (audit R21)."""
    actions = []
    for vid, v in sorted(want.items()):
        if vid not in here.vnets:
            actions.append(Action("vnet.create", {"vnet": vid, "security": v.security}))
        elif vid in here.vnet_info and (change := vnet_change(v, here.vnet_info[vid], here.underlay)):
            actions.append(Action(change, {"vnet": vid, "security": v.security}))
    return actions


def _vm_action(vm: DesiredVm, have: dict[str, Any] | None, here: Here) -> Action | None:
    """What to do about one VM the manager wants here (`have`: the domain here), if anything."""
    running = have is not None and have.get("state") in ("running", "paused")
    if vm.incoming:
        return None  # arriving by migration: libvirt brings it
    if vm.migrate_to is not None:
        move = vm.migrate_to
        fresh = running and here.attempts.get(vm.name) != move.attempt  # once per attempt
        return Action("vm.migrate", {"name": vm.name, **move.model_dump()}) if fresh else None
    if running:
        return None
    left = here.departed.get(vm.name)
    if left is not None and vm.restart_departed != left:
        return Action("vm.hold", {"name": vm.name, "attempt": left})  # said in the report
    if waiting := [d.volume for d in vm.disks if not d.local and d.port is None]:
        return Action("vm.wait", {"name": vm.name, "volumes": waiting})  # their exports not reported yet
    disks = {"disks": [d.model_dump() for d in vm.disks]} if vm.disks else {}
    return Action("vm.start", {"name": vm.name, "vcpus": vm.vcpus, "memory_mib": vm.memory_mib,
                               "nics": [n.model_dump() for n in vm.nics], **disks})


def _stops(wanted: set[str], have_vms: dict[str, dict[str, Any]],
           here: Here) -> tuple[set[str], set[str], list[Action]]:
    """Managed VMs here the manager does not want: (TAPs of those destroyed now, TAPs of those
    shutting down gracefully, the stop actions)."""
    leaving: set[str] = set()  # TAPs of the VMs destroyed here now
    stopping: set[str] = set()  # TAPs of the VMs shutting down gracefully (gone in a later round)
    actions = []
    for name in sorted(have_vms):
        if is_managed(name) and name not in wanted:
            force = name not in here.told
            actions.append(Action("vm.stop", {"name": name, "force": force}))
            (leaving if force else stopping).update(n.get("tap") or "" for n in have_vms[name].get("nics", []))
    return leaving, stopping, actions


def _vnet_removals(wanted: set[int], here: Here, leaving: set[str], stopping: set[str]) -> list[Action]:
    """VNETs made for the manager that it no longer wants: deleted, unless something else is plugged in."""
    actions = []
    for vid in sorted(here.managed_vnets - wanted):
        if vid not in here.vnets:
            continue
        ports = set(here.ports.get(vid, []))
        others = sorted(ports - leaving - stopping)
        if others:  # someone plugged something else in: keep the VNET rather than cut it off
            actions.append(Action("vnet.keep", {"vnet": vid, "ports": others}))
        elif not ports & stopping:  # else a VM on it is still shutting down: its network stays until it is off
            actions.append(Action("vnet.delete", {"vnet": vid}))
    return actions


def vnet_change(want: DesiredVnet, have: dict[str, Any], underlay: str | None) -> str | None:
    """How a VNET this host has must change to be what the manager wants (audit R21): a VNET id
    can change owner, level or MTU, and keys rotate, while the host keeps the VNET. `vnet.recreate`
    for what cannot change in place (security level, MTU), `vnet.update` for keys and members."""
    if have.get("security", "none") != want.security:
        return "vnet.recreate"
    if want.mtu is not None and want.mtu != have.get("mtu"):
        return "vnet.recreate"
    if want.keys is not None and \
            wanted_fingerprint(want.security, want.keys.model_dump()) != have.get("key_fingerprint"):
        return "vnet.update"
    if want.members is not None and sorted(set(want.members) - {underlay}) != sorted(have.get("members", [])):
        return "vnet.update"
    return None


def wanted_fingerprint(security: str, keys: dict[str, Any]) -> str | None:
    """The fingerprint the gatekeeper shows for these keys once installed (None if malformed:
    installing them then fails with the reason, and that error is reported)."""
    try:
        secrets = {int(e): bytes.fromhex(str(s)) for e, s in keys.get("secrets", {}).items()}
        send = keys.get("send_epoch")
        return keys_fingerprint(None if security == "none" else security, secrets, None if send is None else int(send))
    except (ValueError, TypeError, AttributeError):
        return None
