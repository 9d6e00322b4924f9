"""From stored farms and host reports to what each host should run, and each farm's status.
Pure: the API calls it after every change; gatekeepers fetch their part and converge.

    farm status = {instances: [{name, vm, host, addresses}], vnet_ids: {vnet: id},
                   conditions: {Placed, Ready, Degraded}, unplaced: {instance: [why]}}
What each host should run is softudc/manager/desired.py; its shape, the report's and the VM
naming rule (`<farm>--<instance>`) are the contract in softudc/model/hoststate.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from typing import Any

from softudc.manager import migration
from softudc.manager.harestart import relocate, without_stale
from softudc.manager.migration import COLD_MOVE_TIMEOUT_S as COLD_MOVE_TIMEOUT_S
from softudc.manager.migration import MIGRATION_STALL_S as MIGRATION_STALL_S
from softudc.manager.migration import holds_none
from softudc.manager.planner import Instance, plan_farm
from softudc.manager.workflow import Workflow
from softudc.model.farm import Farm
from softudc.model.hoststate import SEPARATOR, vm_name
from softudc.placement import Host
from softudc.placement.model import fmt_mib


def inventory(host_reports: dict[str, dict[str, Any]]) -> list[Host]:
    """Hosts that reported capacity; only `ready` ones take new VMs (placement skips the rest)."""
    return [Host(name, int(r["vcpus"]), int(r["memory_mib"]), str(r.get("state", "ready")))
            for name, r in sorted(host_reports.items()) if "vcpus" in r and "memory_mib" in r]


# a host whose last report is older than this is `down` (a lab or test may set it lower: HA restart)
HOST_DOWN_AFTER_S = float(os.environ.get("SOFTUDC_HOST_DOWN_AFTER_S", "30"))
OFF = ("down", "standby")  # a report from a host in these states is stale: what it ran is not running
DEPARTED_MARGIN_S = 10.0  # a report stored this long after a departure was built after it (report timeout)
# One VM, one host (audit R5, R12, R13): a report confirms what the manager decided but never
# transfers ownership, and nothing that could leave a second copy running is concluded from the
# absence of news. "Gone from a host" needs a fresh report from that host saying it holds no such
# domain in any state (migration.holds_none, migration.fresh).


def observe(farm: str, instances: list[dict[str, Any]], reports: dict[str, dict[str, Any]],
            now: float) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Instances as the hosts' reports show them: migrations that finished, failed or progressed;
    VMs found running where the manager did not put them (an event, never a change of owner); VMs
    that left their host by a migration that came to nothing (restarted there once that is safe).
    Returns the instances and (type, message) events."""
    running_on: dict[str, list[str]] = {}
    for host, r in sorted(reports.items()):
        for vm in r.get("running", []):
            running_on.setdefault(vm, []).append(host)
    out: list[dict[str, Any]] = []
    events: list[tuple[str, str]] = []
    for inst in instances:
        inst = dict(inst)
        name = vm_name(farm, inst["name"])
        where = running_on.get(name, [])
        moving, was = inst.get("migrating"), inst["host"]
        if moving and moving.get("cold"):
            _observe_cold(inst, name, where, reports, now, events)
        elif moving:
            _observe_live(inst, name, where, reports, now, events)
        # The source's report that says "completed" may still list it running: not a stray copy.
        _unexpected(inst, name, [h for h in where if h != was or inst["host"] == was], events)
        _restart_decision(inst, name, where, reports)
        out.append(inst)
    return out, events


def _observe_cold(inst: dict[str, Any], name: str, where: list[str], reports: dict[str, dict[str, Any]],
                  now: float, events: list[tuple[str, str]]) -> None:
    """A cold move, stepped by migration.COLD; the instance changes host once it is `done`."""
    record, wf, _ = migration.observe_cold(inst["migrating"], bool(where), reports.get(inst["host"], {}),
                                               name, now)
    src, to = inst["host"], record["to"]
    if wf.state == "done":
        events.append(("Migrated", f"{inst['name']}: {src} -> {to} (cold: stopped, started there)"))
        inst["host"] = to
    elif wf.state == "aborted":
        events.append(("MigrationFailed", f"{inst['name']}: cold move {src} -> {to} given up after "
                                          f"{COLD_MOVE_TIMEOUT_S:.0f} s: {src} never confirmed {name} stopped "
                                          f"(is its gatekeeper reporting?); it stays on {src}"))
    _keep(inst, record, wf)


def _observe_live(inst: dict[str, Any], name: str, where: list[str], reports: dict[str, dict[str, Any]],
                  now: float, events: list[tuple[str, str]]) -> None:
    """A live move, stepped by migration.LIVE from what the reports say (migration.LiveView); the
    instance changes host once it is `done`, and every outcome is said as it happens."""
    moving = inst["migrating"]
    src, to = inst["host"], moving["to"]
    job = reports.get(src, {}).get("migrations", {}).get(name, {})
    job = job if job.get("attempt") == moving["attempt"] else {}
    view = migration.LiveView(job, name in reports.get(to, {}).get("prepared", []), to in where, src in where)
    record, wf, taken = migration.observe_live(moving, view, reports.get(to, {}), name, now)
    for step in taken:
        events.extend(_said(inst["name"], name, src, record, step, job, reports, src in where, now))
    if wf.state == "done":
        inst["host"] = to
    _keep(inst, record, wf)


def _keep(inst: dict[str, Any], record: dict[str, Any], wf: Workflow) -> None:
    """The instance's `migrating` record after a look: gone once the workflow is over (the events
    say how it ended), else its state, steps, progress and marks."""
    if wf.over:
        del inst["migrating"]
    else:
        inst["migrating"] = migration.save(record, wf)


def _said(inst: str, name: str, src: str, moving: dict[str, Any], step: migration.Transition,
          job: dict[str, Any], reports: dict[str, dict[str, Any]], src_runs: bool, now: float) -> list[tuple[str, str]]:
    """The farm's events for one step of a live move."""
    to = moving["to"]
    if step.event == migration.ARRIVED_STOPPED:
        return [("Migrated", f"{inst}: {src} -> {to} live, but {name} was not running on {to} when it reported "
                             f"(it stopped or crashed on arrival: see its console log there); {to} starts it again")]
    if step.after == "done":
        downtime = reports.get(to, {}).get("arrivals", {}).get(name, {}).get("downtime_ms", "?")
        copy = f"copied in {job['wall_ms']} ms, " if job.get("wall_ms") else ""
        took = f", {now - moving['since']:.1f} s after the request" if moving.get("since") else ""
        return [("Migrated", f"{inst}: {src} -> {to} live, {copy}downtime {downtime} ms{took}")]
    if step.after == "aborted":
        here = "keeps running on" if src_runs else "stays with"
        return [("MigrationFailed", f"{inst}: {src} -> {to}: {_outcome_text(step.before, moving, src)}; "
                                    f"{to} holds no copy, so it {here} {src}")]
    if step.after in migration.AWAITING and step.after != "completed":  # completed: the arrival is due
        return [("MigrationFailed", f"{inst}: {src} -> {to}: {_outcome_text(step.after, moving, src)}; it stays "
                                    f"'migrating' until {to} confirms whether it holds {name}")]
    return []


def _outcome_text(state: str, moving: dict[str, Any], src: str) -> str:
    if state == "silent":
        return f"{src} never started the migration (is its gatekeeper running?)"
    if state == "stalled":
        return f"{moving['to']} never prepared for it (is its gatekeeper running?)"
    if state == "unknown":
        return f"outcome unknown ({moving.get('error')}): the VM no longer runs on {src}"
    if state == "completed":
        return f"{src} says it completed, but the destination does not run it"
    return str(moving.get("error"))


def observed_marks(observed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per instance, what observe() found that the farm's status keeps: `unexpected` (hosts running
    it uninvited, so each is reported once) and `restart` (the host may boot it again)."""
    return {i["name"]: {k: i[k] for k in ("unexpected", "restart") if k in i} for i in observed}


def _unexpected(inst: dict[str, Any], name: str, where: list[str], events: list[tuple[str, str]]) -> None:
    """A VM running on a host the manager did not tell to run it. The report proves nothing (any host
    can claim any name) and the host has passed no placement check, so it gets neither the instance
    nor its VNETs' keys; it stops its copy, since it is not told to run it. An admin who wants the VM
    there migrates it through the manager, which checks room, rules and the host."""
    moving = inst.get("migrating") or {}
    allowed = {inst["host"]} | ({moving["to"]} if moving and not moving.get("cold") else set())
    others = sorted(set(where) - allowed)
    before = set(inst.get("unexpected", []))
    for host in others:
        if host not in before:
            events.append(("UnexpectedVM", f"{inst['name']}: {name} runs on {host}, which was not told to run it; "
                                           f"not adopted: it stays on {inst['host']} and {host} stops its copy. "
                                           f"To run it on {host}, migrate it there (softudc vm migrate "
                                           f"{name.replace(SEPARATOR, '/', 1)} --to {host})"))
    if others:
        inst["unexpected"] = others
    else:
        inst.pop("unexpected", None)


def _restart_decision(inst: dict[str, Any], name: str, where: list[str], reports: dict[str, dict[str, Any]]) -> None:
    """A VM that left its host by a migration is never restarted there by the host itself (a copy may
    run at the destination). The manager says `restart` (the attempt) once the destination has
    reported, after the departure, that it holds no such domain, and no host runs it."""
    inst.pop("restart", None)
    if inst.get("migrating") or where:
        return
    src = reports.get(inst["host"], {})
    departed = src.get("departed")
    left = departed.get(name) if isinstance(departed, dict) else None
    if not isinstance(left, dict) or not isinstance(src.get("reported"), int | float):
        return
    went, ago, attempt = left.get("to"), left.get("ago_s"), left.get("attempt")
    if not isinstance(went, str) or not isinstance(attempt, str) or not isinstance(ago, int | float) \
            or isinstance(ago, bool) or not 0 <= ago < 1e9:
        return  # not what a gatekeeper sends: no decision on it
    to = next((h for h, r in sorted(reports.items()) if went in (h, r.get("migration_uri"))), None)
    dest = reports.get(to or "", {})
    since = float(src["reported"]) - float(ago)  # no earlier than the departure
    if to and to != inst["host"] and holds_none(dest, name) and \
            float(dest.get("reported", 0)) > since + DEPARTED_MARGIN_S:
        inst["restart"] = attempt


def reconcile_farm(farm: Farm, status: dict[str, Any], hosts: list[Host],
                   taken_vnet_ids: dict[tuple[str, str], int], host_reports: dict[str, dict[str, Any]],
                   now: float = 0.0, fenced: frozenset[str] = frozenset()
                   ) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
    """The farm's new status (instances placed, kept or gone), a one-line summary, and what was
    observed on the hosts as events. `hosts` carry the usage of every other farm already.
    Instances on a `fenced` host (confirmed off) are placed again elsewhere (harestart.relocate)."""
    host_reports = without_stale(host_reports, fenced)
    observed, events = observe(farm.name, status.get("instances", []), host_reports, now)
    marks = observed_marks(observed)  # what observe() concluded beyond placement (R5, R12)
    current = [Instance(i["name"], i["vm"], i["host"], dict(i.get("addresses", {})), i.get("migrating"),
                        dict(i.get("macs", {}))) for i in observed]
    current, restarted, stuck = relocate(farm, current, hosts, fenced, host_reports, status.get("unplaced"))
    events.extend(restarted)
    known = {**taken_vnet_ids, **{(farm.name, k): v for k, v in status.get("vnet_ids", {}).items()}}
    plan = plan_farm(farm, hosts, current, known)
    plan.unplaced.update(stuck)
    instances = sorted(plan.keep + plan.create, key=lambda i: i.name)
    running = {(vm, h) for h, r in host_reports.items() if r.get("state") not in OFF for vm in r.get("running", [])}
    sizes = {v.name: (v.vcpus, v.memory_mib) for v in farm.vms}
    ready = all((vm_name(farm.name, i.name), i.host) in running for i in instances)
    broken = vnet_errors(plan.vnet_ids, host_reports)
    new_status = {
        "instances": [{**{k: v for k, v in asdict(i).items() if v is not None},
                       **instance_state(vm_name(farm.name, i.name), i, running, host_reports, broken),
                       **pending_change(vm_name(farm.name, i.name), i, sizes.get(i.vm), host_reports),
                       **marks.get(i.name, {})}
                      for i in instances],
        "vnet_ids": plan.vnet_ids,
        "unplaced": plan.unplaced,
        "conditions": {"Placed": not plan.unplaced, "Ready": ready and not plan.unplaced,
                       "Degraded": bool(plan.unplaced) or (bool(instances) and not ready) or bool(broken)},
    }
    if broken:  # a VNET a host could not make (MTU, keys...): the farm's owner sees why (audit R25)
        new_status["vnet_errors"] = [f"{h}: VNET {name}: {why}" for (h, name), why in sorted(broken.items())]
    summary = f"+{len(plan.create)} -{len(plan.delete)} ={len(plan.keep)}"
    if plan.unplaced:
        summary += f", {len(plan.unplaced)} cannot be placed"
    return new_status, summary, events


VNET_ERROR = re.compile(r"^vnet\.[a-z]+ ([0-9]+): (.*)$", re.DOTALL)  # converge's "vnet.create 5: why"


def vnet_errors(vnet_ids: dict[str, int], reports: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(host, VNET name) -> the error a host reported making or changing one of these VNETs."""
    names = {str(i): n for n, i in vnet_ids.items()}
    out = {}
    for host, report in sorted(reports.items()):
        for error in report.get("errors", []):
            m = VNET_ERROR.match(error) if isinstance(error, str) else None
            if m and m.group(1) in names:
                out[(host, names[m.group(1)])] = m.group(2)
    return out


def instance_state(name: str, inst: Instance, running: set[tuple[str, str]],
                   reports: dict[str, dict[str, Any]],
                   vnet_errors: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
    """What the hosts say of an instance: running, migrating, or pending, with the error its host
    reported for it or for one of its VNETs (a VM that fails to start says why in the farm's own
    status)."""
    if inst.migrating:
        return {"state": "migrating"}
    if (name, inst.host) in running:
        return {"state": "running"}
    report = reports.get(inst.host, {})
    error = next((e.split(": ", 1)[1] for e in report.get("errors", []) if f" {name}: " in f" {e}"), None)
    error = error or next((f"VNET {vnet}: {why}" for (h, vnet), why in sorted((vnet_errors or {}).items())
                           if h == inst.host and vnet in inst.addresses), None)
    state = {"state": "down" if report.get("state") in OFF else "pending"}
    return {**state, "error": error} if error else state


def pending_change(name: str, inst: Instance, want: tuple[int, int] | None,
                   reports: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A running VM whose size the descriptor changed keeps its old size until it restarts (a
    live VM is never restarted behind the admin's back): say so rather than stay silent."""
    have = reports.get(inst.host, {}).get("sizes", {}).get(name)
    if want is None or not isinstance(have, list) or len(have) != 2 or \
            not all(type(v) is int for v in have) or tuple(have) == want:
        return {}  # unknown (the host did not say) or unchanged
    parts = [f"{what} {a} -> {b}" for what, a, b in (("vCPUs", have[0], want[0]),
                                                      ("memory", fmt_mib(have[1]), fmt_mib(want[1]))) if a != b]
    return {"change": ", ".join(parts) + " after a stop and start"}

