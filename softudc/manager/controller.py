"""From stored farms and host reports to what each host should run, and each farm's status.
Pure: the API calls it after every change; gatekeepers fetch their part and converge.

    farm status = {instances: [{name, vm, host, addresses}], vnet_ids: {vnet: id},
                   conditions: {Placed, Ready, Degraded}, unplaced: {instance: [why]}}
What each host should run is softudc/manager/desired.py; its shape, the report's and the VM
naming rule (`<farm>--<instance>`) are the contract in softudc/model/hoststate.py.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from softudc.manager.planner import Instance, plan_farm
from softudc.model.farm import Farm
from softudc.model.hoststate import SEPARATOR, vm_name
from softudc.placement import Host
from softudc.placement.model import fmt_mib


def inventory(host_reports: dict[str, dict[str, Any]]) -> list[Host]:
    """Hosts that reported capacity; only `ready` ones take new VMs (placement skips the rest)."""
    return [Host(name, int(r["vcpus"]), int(r["memory_mib"]), str(r.get("state", "ready")))
            for name, r in sorted(host_reports.items()) if "vcpus" in r and "memory_mib" in r]


HOST_DOWN_AFTER_S = 30.0  # a host whose last report is older than this is `down`
MIGRATION_STALL_S = 600.0  # a requested live migration the source never started: settled after this
COLD_MOVE_TIMEOUT_S = 300.0  # a cold move whose source never confirmed the VM stopped: given up after this
DEPARTED_MARGIN_S = 10.0  # a report stored this long after a departure was built after it (report timeout)
LIVE_ENDED = ("completed", "failed", "unknown")  # a source job in one of these states is over
# One VM, one host (audit R5, R12, R13): a report confirms what the manager decided but never
# transfers ownership, and nothing that could leave a second copy running is concluded from the
# absence of news. "Gone from a host" needs a fresh report from that host saying it holds no such
# domain in any state; "fresh" means built after the moment in question. A report stored before
# that moment may have been built long before it, so freshness is proven without comparing
# clocks: the first report stored after the mark was set may be old, but the next one was built
# after the host got the answer to the first (a gatekeeper reports, fetches, converges, reports).


def holds_none(report: dict[str, Any], name: str) -> bool:
    """The host says it has no domain `name` at all: `sizes` lists every managed domain there in any
    state (running, paused for an incoming migration, shut off but defined). No `sizes`, no evidence."""
    sizes = report.get("sizes")
    return isinstance(sizes, dict) and name not in sizes and name not in report.get("running", [])


def _fresh(marks: dict[str, Any], key: str, report: dict[str, Any]) -> bool:
    """True once `report` was built after the first time this was asked for `key` (see above).
    `marks` (kept in the instance's `migrating` record) remembers [report seen then, the next one]."""
    at = report.get("reported")
    if not isinstance(at, int | float):
        return False
    base, after = marks.get(key) or (None, None)
    if base is None:
        marks[key] = [at, None]
        return False
    if after is None:
        if at > base:
            marks[key] = [base, at]
        return False
    return bool(at > after)


def _own_copy(moving: dict[str, Any]) -> dict[str, Any]:
    """A `migrating` record to change without touching the stored status it came from (which the
    caller compares against to know whether anything changed)."""
    return {**moving, "marks": {k: list(v) for k, v in (moving.get("marks") or {}).items()}}


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
    """A cold move completes once the source has reported, freshly, that it holds no such domain:
    only then may the destination start it (a stale report, or none from a silent source, proves
    nothing). Until then giving up is always safe: the destination has not started it."""
    moving = inst["migrating"] = _own_copy(inst["migrating"])
    marks = moving["marks"]
    src = reports.get(inst["host"], {})
    if not where and _fresh(marks, "source", src) and holds_none(src, name):
        events.append(("Migrated", f"{inst['name']}: {inst['host']} -> {moving['to']} (cold: stopped, "
                                   "started there)"))
        inst["host"] = moving["to"]
        del inst["migrating"]
    elif now - moving.get("since", now) > COLD_MOVE_TIMEOUT_S:
        events.append(("MigrationFailed", f"{inst['name']}: cold move {inst['host']} -> {moving['to']} given up "
                                          f"after {COLD_MOVE_TIMEOUT_S:.0f} s: {inst['host']} never confirmed "
                                          f"{name} stopped (is its gatekeeper reporting?); it stays on "
                                          f"{inst['host']}"))
        del inst["migrating"]


def _observe_live(inst: dict[str, Any], name: str, where: list[str], reports: dict[str, dict[str, Any]],
                  now: float, events: list[tuple[str, str]]) -> None:
    moving = inst["migrating"] = _own_copy(inst["migrating"])
    src, to = inst["host"], moving["to"]
    job = reports.get(src, {}).get("migrations", {}).get(name, {})
    job = job if job.get("attempt") == moving["attempt"] else {}
    # The destination runs it: done, even when the manager never heard the source say so (the commit
    # was lost). Only once the source was handed the move (prepared): before that it cannot be there
    # by this migration.
    if moving.get("prepared") and to in where and (job.get("state") == "completed" or src not in where):
        downtime = reports.get(to, {}).get("arrivals", {}).get(name, {}).get("downtime_ms", "?")
        copy = f"copied in {job['wall_ms']} ms, " if job.get("wall_ms") else ""
        took = f", {now - moving['since']:.1f} s after the request" if moving.get("since") else ""
        events.append(("Migrated", f"{inst['name']}: {src} -> {to} live, {copy}downtime {downtime} ms{took}"))
        inst["host"] = to
        del inst["migrating"]
        return
    ended = job.get("state") in LIVE_ENDED
    stalled = not job and now - moving.get("since", now) > MIGRATION_STALL_S
    if job:
        moving.update({k: job[k] for k in ("state", "data_total", "data_processed") if k in job})
    elif not moving.get("prepared") and name in reports.get(to, {}).get("prepared", []):
        moving.update(prepared=True, state="prepared")
    if not (ended or stalled or moving.get("outcome")):
        return
    if not moving.get("outcome"):
        moving["outcome"] = {"state": job.get("state", "stalled"), "error": job.get("error")}
        if job.get("state") != "completed":  # completed: the destination's report that it runs it is due
            said = _outcome_text(moving["outcome"], src)
            events.append(("MigrationFailed", f"{inst['name']}: {src} -> {to}: {said}; it stays 'migrating' until "
                                              f"{to} confirms whether it holds {name}"))
    if job.get("state") == "copying":
        return  # the source (re)started this attempt after all: follow it
    if _fresh(moving["marks"], "destination", reports.get(to, {})) and \
            holds_none(reports.get(to, {}), name):
        here = "keeps running on" if src in where else "stays with"
        events.append(("MigrationFailed", f"{inst['name']}: {src} -> {to}: {_outcome_text(moving['outcome'], src)}; "
                                          f"{to} holds no copy, so it {here} {src}"))
        del inst["migrating"]


def _outcome_text(outcome: dict[str, Any], src: str) -> str:
    state = outcome.get("state")
    if state == "stalled":
        return f"{src} never started the migration (is its gatekeeper running?)"
    if state == "unknown":
        return f"outcome unknown ({outcome.get('error')}): the VM no longer runs on {src}"
    if state == "completed":
        return f"{src} says it completed, but the destination does not run it"
    return str(outcome.get("error"))


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
                   now: float = 0.0) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
    """The farm's new status (instances placed, kept or gone), a one-line summary, and what was
    observed on the hosts as events. `hosts` carry the usage of every other farm already."""
    observed, events = observe(farm.name, status.get("instances", []), host_reports, now)
    marks = observed_marks(observed)  # what observe() concluded beyond placement (R5, R12)
    current = [Instance(i["name"], i["vm"], i["host"], dict(i.get("addresses", {})), i.get("migrating"),
                        dict(i.get("macs", {}))) for i in observed]
    known = {**taken_vnet_ids, **{(farm.name, k): v for k, v in status.get("vnet_ids", {}).items()}}
    plan = plan_farm(farm, hosts, current, known)
    instances = sorted(plan.keep + plan.create, key=lambda i: i.name)
    running = {(vm, h) for h, r in host_reports.items() for vm in r.get("running", [])}
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
    state = {"state": "down" if report.get("state") == "down" else "pending"}
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

