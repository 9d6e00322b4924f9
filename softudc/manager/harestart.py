"""HA restart with fencing (issue 12, item 7): a host that stopped reporting (`down`) is suspected;
the leader fences it through its power driver (softudc/power/fence.py: off, confirmed off), and only
then are its instances placed on the other ready hosts, highest `priority` first (`ha: none` VMs
are left where they were). Never a VM running twice: nothing is restarted on less than a
confirmed fence.

One record per host being dealt with, in the store (kind `hafence`, spec):

    {"state": "fencing", "attempts": 1, "since": T, "by": MANAGER}   a fence is under way
    {"state": "failed", "attempts": N, "next_try": T, "reason": "..."}  not confirmed: retried later
    {"state": "fenced", "at": T, "reason": "..."}   confirmed off; the host is in `standby`
    {"state": "nopower", "since": T}                no power driver: never fenced automatically

So a manager restart or a new leader resumes where the last one was, and never fences a host
twice at once: a `fencing` record is another fence under way until FENCE_STALE_S have passed.
A fenced host's report (its `running` list) is stale and ignored. When it reports again (powered
on: `softudc host power H on`, rejoined), the record goes and the host is a host like any other:
its gatekeeper is told to run only what is placed there now, so it stops anything else.

`decide` is pure (tested with hypothesis); `HaRestart` runs its actions (the fence in a thread of
its own, so the controllers' pass never waits on a BMC); `relocate` re-places one farm's
instances whose host is fenced (called from controller.reconcile_farm).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from softudc.manager.planner import Instance
from softudc.manager.store import Conflict, Obj, Store
from softudc.model.farm import Farm
from softudc.model.hoststate import vm_name as vm_name_of
from softudc.placement import Group, Host, Request, charge, place
from softudc.power.driver import PowerDriver, PowerError
from softudc.power.fence import TIMEOUT_S, Fenced, fence

KIND = "hafence"
STANDBY = "standby"  # where a fenced host is put (as apipower's fence does): not placed on, not `down`
MAX_ATTEMPTS = 5  # fences tried per outage; then it waits for an admin
BACKOFF_S = (5.0, 15.0, 30.0, 60.0)  # before the 2nd, 3rd, ... attempt (the last one repeats)
FENCE_STALE_S = TIMEOUT_S + 30.0  # a `fencing` record older than this: that fence died with its manager
log = logging.getLogger("softudc.manager.harestart")


@dataclass(frozen=True)
class HostView:
    """What `decide` needs of one host: its state as reports() says, whether it has a power config,
    and the instances placed on it ("farm/instance") that would be restarted (ha: restart) or not."""

    state: str
    has_power: bool
    restart: tuple[str, ...] = ()
    left: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    """`record` (store `spec` as the host's record), `forget` (delete it), `fence` (start one; the
    record says `fencing` already), `event` (type, message)."""

    kind: str
    host: str
    spec: dict[str, Any] | None = None
    type_: str = ""
    message: str = ""


def backoff(attempts: int) -> float:
    """Seconds before the next fence after `attempts` failed ones."""
    return BACKOFF_S[min(max(attempts, 1), len(BACKOFF_S)) - 1]


def decide(hosts: dict[str, HostView], records: dict[str, dict[str, Any]], now: float, me: str,
           in_flight: frozenset[str] = frozenset()) -> list[Action]:
    """What to do this pass (see the module's docstring); one host's actions never depend on another's."""
    out: list[Action] = []
    for name in sorted(set(hosts) | set(records)):
        view, record = hosts.get(name), records.get(name)
        if view is None:  # the host was removed: its record goes too
            out.append(Action("forget", name))
        elif view.state == "down":
            out.extend(_down(name, view, record, now, me, name in in_flight))
        elif record is not None:
            out.extend(_alive(name, view, record))
    return out


def _down(name: str, view: HostView, record: dict[str, Any] | None, now: float, me: str,
          in_flight: bool) -> list[Action]:
    state = (record or {}).get("state")
    if state == "fenced" or in_flight:
        return []  # fenced (powered on again, not yet reporting), or a fence of ours under way
    if not view.restart:
        return []  # nothing to restart: no reason to cut its power
    if not view.has_power:
        if state == "nopower":
            return []
        return [Action("record", name, {"state": "nopower", "since": now}),
                Action("event", name, type_="NotFenced", message=(
                    f"{name} is down and has no power driver configured, so it cannot be fenced and its "
                    f"instances are not restarted elsewhere: {', '.join(view.restart)}. Configure one "
                    f"(softudc host power-config {name} -f FILE, docs/power.md), or once you know it is off: "
                    f"softudc host power {name} fence --force"))]
    attempts = int((record or {}).get("attempts", 0))
    if state == "fencing" and now - float(record.get("since", 0) if record else 0) < FENCE_STALE_S:
        return []  # another manager's fence, maybe still under way
    if state == "failed" and (attempts >= MAX_ATTEMPTS or now < float(record.get("next_try", 0) if record else 0)):
        return []
    spec = {"state": "fencing", "attempts": attempts + 1, "since": now, "by": me}
    return [Action("record", name, spec), Action("fence", name, spec),
            Action("event", name, type_="Suspected", message=(
                f"{name} missed its heartbeats: fencing it (attempt {attempts + 1} of {MAX_ATTEMPTS}) before "
                f"restarting {len(view.restart)} instance(s) elsewhere"))]


def _alive(name: str, view: HostView, record: dict[str, Any]) -> list[Action]:
    state = record.get("state")
    if state == "fenced" and view.state == STANDBY:
        return []  # fenced and off
    if state == "fencing":
        return []  # the fence ends it
    said = {"fenced": f"{name} reports again after it was fenced; it runs only what is placed on it now",
            "failed": f"{name} reports again; it was never fenced, so nothing of it was restarted elsewhere",
            "nopower": f"{name} reports again; nothing of it was restarted elsewhere"}
    return [Action("forget", name), Action("event", name, type_="Recovered", message=said.get(str(state), name))]


def after_fence(name: str, record: dict[str, Any], outcome: Fenced, now: float,
                left: tuple[str, ...] = ()) -> tuple[dict[str, Any], str, str]:
    """The record after a fence, and its event (type, message)."""
    attempts = int(record.get("attempts", 1))
    if outcome.confirmed:
        kept = f"; left there (ha: none): {', '.join(left)}" if left else ""
        return ({"state": "fenced", "at": now, "reason": outcome.reason},
                "Fenced", f"{name}: {outcome.reason} in {outcome.seconds:.1f} s; its instances are restarted on "
                          f"other hosts{kept}")
    if attempts >= MAX_ATTEMPTS:
        then = (f"given up after {attempts} attempts: make sure {name} is off, then "
                f"softudc host power {name} fence --force")
    else:
        then = f"attempt {attempts} of {MAX_ATTEMPTS}; retried in {backoff(attempts):.0f} s"
    return ({"state": "failed", "attempts": attempts, "next_try": now + backoff(attempts), "reason": outcome.reason},
            "FenceFailed", f"{name}: {outcome.reason}; nothing of it is restarted elsewhere ({then})")


# --- restart: one farm's instances on fenced hosts, placed again -----------------------------------

def relocate(farm: Farm, current: list[Instance], hosts: list[Host], fenced: frozenset[str],
             reports: dict[str, dict[str, Any]], unplaced_before: dict[str, list[str]] | None = None
             ) -> tuple[list[Instance], list[tuple[str, str]], dict[str, list[str]]]:
    """`current` with each instance on a fenced host (ha: restart, not migrating, not running on any
    other host) placed on another ready host, highest priority first; its addresses and MACs kept.
    `hosts` carry every other farm's usage (left as they are). Returns the instances,
    (type, message) events, and the instances that could not be placed with why (they stay where
    they were, and are tried again every pass). `reports`: the hosts' (a fenced one's is not read)."""
    if not fenced or not any(i.host in fenced for i in current):
        return current, [], {}
    hosts = [replace(h, groups=dict(h.groups)) for h in hosts]
    running: dict[str, list[str]] = {}
    for h, r in reports.items():
        for vm_name in r.get("running", []) if h not in fenced else []:
            running.setdefault(vm_name, []).append(h)
    vms = {v.name: v for v in farm.vms}
    wanted = [i for i in current if i.host in fenced and i.vm in vms and vms[i.vm].ha == "restart"
              and not i.migrating and not running.get(vm_name_of(farm.name, i.name))]
    moving = {i.name for i in wanted}
    for inst in current:
        if inst.name not in moving and inst.vm in vms:
            _charge(hosts, inst, vms)
    groups = [Group(g.name, g.policy, g.max_per_host) for g in farm.groups]
    out, events, unplaced = {i.name: i for i in current}, [], {}
    for inst in sorted(wanted, key=lambda i: (-vms[i.vm].priority, i.name)):
        vm = vms[inst.vm]
        step = place(hosts, [Request(inst.name, vm.vcpus, vm.memory_mib, vm.group)], groups)
        if step.steps:
            to = step.steps[0].host
            out[inst.name] = replace(inst, host=to)
            _charge(hosts, out[inst.name], vms)
            events.append(("Restarted", f"{inst.name}: {inst.host} was fenced, restarted on {to} "
                                        f"(priority {vm.priority}; {step.steps[0].reason})"))
        else:
            unplaced[inst.name] = step.unplaced.get(inst.name, ["no ready host takes it"])
            if inst.name not in (unplaced_before or {}):
                events.append(("NotRestarted", f"{inst.name}: {inst.host} was fenced, but no other host takes it: "
                                               f"{'; '.join(unplaced[inst.name])}; tried again as room appears"))
    return [out[i.name] for i in current], events, unplaced


def _charge(hosts: list[Host], inst: Instance, vms: dict[str, Any]) -> None:
    vm = vms[inst.vm]
    for h in hosts:
        if h.name == inst.host:
            charge(h, Request(inst.name, vm.vcpus, vm.memory_mib, vm.group))


def without_stale(reports: dict[str, dict[str, Any]], fenced: frozenset[str]) -> dict[str, dict[str, Any]]:
    """The reports with a fenced host's `running` list emptied: it is confirmed off, so what its
    last report said it ran runs no more."""
    return {h: ({**r, "running": []} if h in fenced and r.get("running") else r) for h, r in reports.items()}


# --- running the actions --------------------------------------------------------------------------

class Manages(Protocol):
    store: Store
    manager_id: str

    def _event(self, kind: str, name: str, type_: str, message: str) -> None: ...

    def start(self) -> None: ...


def host_views(hosts: list[Obj], reports: dict[str, dict[str, Any]], farms: list[Obj],
               has_ha: Callable[[Obj, dict[str, Any]], bool]) -> dict[str, HostView]:
    """Each joined host as `decide` sees it; `has_ha(farm, instance)`: restarted after a fence."""
    restart: dict[str, list[str]] = {}
    left: dict[str, list[str]] = {}
    for o in farms:
        for i in o.status.get("instances", []):
            (restart if has_ha(o, i) else left).setdefault(i.get("host", ""), []).append(f"{o.name}/{i['name']}")
    return {h.name: HostView(str(reports.get(h.name, {}).get("state", "ready")), h.spec.get("power") is not None,
                             tuple(restart.get(h.name, [])), tuple(left.get(h.name, []))) for h in hosts}


class HaRestart:
    """The leader's HA step, run in each reconcile pass: reads the records, decides, writes, and
    starts each fence in a thread of its own (its outcome is written when it ends, which the
    controller loop sees as news)."""

    def __init__(self, m: Manages, timeout: float = TIMEOUT_S,
                 drivers: Callable[[Any], PowerDriver] | None = None, grace_s: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.m, self.timeout, self.drivers = m, timeout, drivers
        # A leader suspects no host before it has itself waited this long (the heartbeat timeout):
        # after a manager outage every stored report is old, and no host may be fenced for that.
        self.grace_s, self.clock = grace_s, clock
        self._leading_since: float | None = None
        self._last_step = 0.0
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def fenced(self) -> frozenset[str]:
        return frozenset(o.name for o in self.m.store.objects(KIND) if o.spec.get("state") == "fenced")

    def in_flight(self) -> frozenset[str]:
        with self._lock:
            return frozenset(h for h, t in self._threads.items() if t.is_alive())

    def step(self, reports: dict[str, dict[str, Any]], farms: list[Obj],
             has_ha: Callable[[Obj, dict[str, Any]], bool]) -> frozenset[str]:
        """One pass: decide and act; returns the fenced hosts (whose instances are restarted elsewhere)."""
        now = self.clock()
        if self._leading_since is None or now - self._last_step > max(self.grace_s, 60.0):
            self._leading_since = now  # the first pass of this leader (or after a long pause)
        self._last_step = now
        hosts = self.m.store.objects("host")
        records = {o.name: o for o in self.m.store.objects(KIND)}
        views = host_views(hosts, reports, farms, has_ha)
        if now - self._leading_since < self.grace_s:  # down hosts are left alone for now
            views = {h: v for h, v in views.items() if v.state != "down"}
            records = {h: o for h, o in records.items() if h in views}
        refused: set[str] = set()
        for a in decide(views, {h: o.spec for h, o in records.items()}, now, self.m.manager_id,
                        self.in_flight()):
            if a.host not in refused and not self._act(a, records.get(a.host), views.get(a.host)):
                refused.add(a.host)
        return self.fenced()

    def _act(self, a: Action, record: Obj | None, view: HostView | None) -> bool:
        """Do one action; False when its record changed under this pass (another manager acts on the
        host: this pass does nothing more for it)."""
        if a.kind == "event":
            self.m._event("host", a.host, a.type_, a.message)
        elif a.kind == "forget" and record is not None:
            self.m.store.delete(KIND, a.host)
        elif a.kind == "record" and a.spec is not None:
            try:  # compare-and-swap: two managers never both start a fence
                self.m.store.put(KIND, a.host, a.spec, expect=record.revision if record else 0)
            except Conflict:
                log.warning("%s %s changed under this pass: another manager acts on it", KIND, a.host)
                return False
        elif a.kind == "fence" and a.spec is not None:
            left = view.left if view else ()
            t = threading.Thread(target=self._fence, args=(a.host, a.spec, left), name=f"softudc-fence-{a.host}",
                                 daemon=True)
            with self._lock:
                self._threads[a.host] = t
            t.start()
        return True

    def _fence(self, host: str, record: dict[str, Any], left: tuple[str, ...]) -> None:
        """One fence, start to end: the outcome recorded, the host put in standby when confirmed."""
        obj = self.m.store.get("host", host)
        try:
            # softudc.power.factory.driver_for, which make_app gives the Manager (imported here: a cycle)
            drivers = self.drivers or vars(self.m).get("power_drivers")
            if drivers is None:
                raise PowerError("this manager has no power drivers loaded (it runs without its API)")
            outcome = fence(drivers((obj.spec if obj else {}).get("power")), self.timeout)
        except PowerError as e:  # a stored config that no longer makes a driver
            outcome = Fenced(False, f"power config: {e}", 0.0, 0)
        except Exception as e:  # never a confirmation by accident
            log.exception("fencing %s", host)
            outcome = Fenced(False, f"internal error ({type(e).__name__}: {e})", 0.0, 0)
        spec, type_, message = after_fence(host, record, outcome, time.time(), left)
        try:
            if outcome.confirmed:
                self._standby(host)
            self.m.store.put(KIND, host, spec)
            self.m._event("host", host, type_, message)
        except Exception:  # NotLeader, or a store gone: the next leader finds `fencing` and retries later
            log.exception("recording the fence of %s", host)
        self.m.start()

    def _standby(self, host: str) -> None:
        obj = self.m.store.get("host", host)
        if obj is not None and obj.spec.get("state", "ready") != STANDBY:
            self.m.store.put("host", host, {**obj.spec, "state": STANDBY})
            self.m._event("host", host, "State",
                          f"{obj.spec.get('state', 'ready')} -> {STANDBY} (fenced: confirmed off)")


def note_fenced(store: Store, host: str, reason: str) -> None:
    """An admin's fence (softudc host power H fence) confirmed `host` off: its instances may now be
    restarted elsewhere, as after the leader's own fence."""
    store.put(KIND, host, {"state": "fenced", "at": time.time(), "reason": reason})
