"""The controllers' reconcile pass: every farm planned against the hosts' latest reports and the
other farms' usage, its status stored, VNET keys made and rotated, and then the long polls whose
host's desired state moved are let go. The controller loop (softudc/manager/loop.py) runs it; no
request does. A mixin of the Manager.

Per-farm isolation (audit R10): whatever goes wrong planning one farm becomes that farm's
Degraded condition; the others are planned as usual and its hosts keep what they ran.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from softudc.manager.controller import HOST_DOWN_AFTER_S, inventory, reconcile_farm
from softudc.manager.farms import FarmCache, Usage
from softudc.manager.harestart import HaRestart
from softudc.manager.longpoll import LongPolls
from softudc.manager.loop import Pass
from softudc.manager.planner import PlanError
from softudc.manager.store import NotLeader, Obj, Store
from softudc.model.source import DescriptorError

COMPACT_EVERY_S = 60.0
TOMBSTONES_KEPT = 10_000  # revisions a tombstone outlives its delete (watchers further behind list again)
log = logging.getLogger("softudc.manager")


class Planning:
    """The reconcile pass: what the Manager provides it (store, lock, farm cache, long polls)."""

    store: Store
    farms: FarmCache
    polls: LongPolls
    _reconcile_lock: threading.RLock
    _compacted_at: float = 0.0
    manager_id: str

    if TYPE_CHECKING:  # provided by the Manager (or another of its mixins)
        def reports(self) -> dict[str, dict[str, Any]]:
            ...

        def _event(self, kind: str, name: str, type_: str, message: str) -> None:
            ...

        def _advance_keys(self, statuses: list[tuple[str, dict[str, Any]]]) -> None:
            ...

        def start(self) -> None:
            ...

    @property
    def ha(self) -> HaRestart:
        """The HA restart step (softudc/manager/harestart.py), made at first use."""
        ha: HaRestart | None = self.__dict__.get("_ha_restart")
        if ha is None:
            ha = self.__dict__["_ha_restart"] = HaRestart(self, grace_s=HOST_DOWN_AFTER_S)
        return ha

    def _has_ha(self, farm: Obj, instance: dict[str, Any]) -> bool:
        """Whether an instance is restarted elsewhere after its host is fenced (its VM's `ha`)."""
        try:
            vm = next((v for v in self.farms.farm(farm).vms if v.name == instance.get("vm")), None)
        except DescriptorError:
            return True  # planned as it was: restarted as by default
        return vm is None or vm.ha == "restart"

    def _restart_priority(self, farm: Obj, fenced: frozenset[str]) -> int:
        """The highest `priority` of a farm's instances to restart from a fenced host (the farms
        with the most important ones are planned first, so they get the room first); 0 if none."""
        waiting = {i.get("vm") for i in farm.status.get("instances", []) if i.get("host") in fenced}
        if not waiting:
            return 0
        try:
            return max((v.priority for v in self.farms.farm(farm).vms if v.ha == "restart" and v.name in waiting),
                       default=0)
        except DescriptorError:
            return 0

    def _usage(self, farms: list[Obj]) -> Usage:
        return Usage([(o.name, self.farms.for_hosts(o), o.status) for o in farms])

    def _plan_one(self, farm: Any, status: dict[str, Any], farms: list[Obj], reports: dict[str, dict[str, Any]],
                  usage: Usage | None = None, taken: dict[tuple[str, str], int] | None = None,
                  fenced: frozenset[str] = frozenset()) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
        """One farm's next status against the hosts, the other farms' usage counted. Raises
        PlanError, also when its VNET ids would clash with another farm's (never stored)."""
        usage = usage or self._usage(farms)
        taken = _vnet_ids(farms) if taken is None else taken
        hosts = usage.hosts(inventory(reports), farm.name)
        planned = reconcile_farm(farm, status, hosts, taken, reports, time.time(), fenced)
        _check_vnet_ids(farm.name, planned[0]["vnet_ids"], taken)
        return planned

    def reconcile(self, wake: bool = True) -> Pass:
        """One pass of the controllers (the loop's; tests call it too): re-plan every farm against
        the hosts' latest reports, store statuses, log changes, make and rotate VNET keys, then
        (`wake`) let the long polls whose desired state moved go. Each farm is planned once, against the
        usage of all farms summed once; a farm that fails is Degraded on its own (audit R10, R11)."""
        with self._reconcile_lock:
            start = self.store.revision()
            reports = self.reports()
            farms = self.store.objects("farm")
            usage, taken, busy = self._usage(farms), _vnet_ids(farms), False
            fenced = self.ha.step(reports, farms, self._has_ha)  # HA restart: hosts confirmed off
            statuses = []
            for o in sorted(farms, key=lambda o: -self._restart_priority(o, fenced)):  # stable: as stored else
                status = self._reconcile_farm(o, farms, reports, usage, taken, fenced)
                for vnet in o.status.get("vnet_ids", {}):  # its old ids (read into `taken`) make way
                    taken.pop((o.name, vnet), None)
                taken.update({(o.name, k): v for k, v in status.get("vnet_ids", {}).items()})
                usage.update(o.name, self.farms.for_hosts(o), status)
                busy = busy or any(i.get("migrating") for i in status.get("instances", []))
                statuses.append((o.name, status))
            self._advance_keys(statuses)
            self._compact()
            if (maintain := vars(self).get("maintenance_step")) is not None:  # rollouts, consolidation (dpm.py)
                maintain(self)
            end = self.store.revision()
        if wake:  # the loop wakes them itself, once an apply waiting for this pass has its answer
            self.polls.new_generation()
        return Pass(start, end, busy)

    def _reconcile_farm(self, o: Obj, farms: list[Obj], reports: dict[str, dict[str, Any]], usage: Usage,
                        taken: dict[tuple[str, str], int], fenced: frozenset[str] = frozenset()) -> dict[str, Any]:
        """One farm's step, isolated: whatever goes wrong becomes that farm's Degraded condition with
        the reason (and an event when the reason is new); the other farms go on. Its hosts keep
        what they had."""
        try:
            status, summary, seen = self._plan_one(self.farms.farm(o), o.status, farms, reports, usage, taken, fenced)
        except NotLeader:
            raise  # not this farm's fault: the pass ends, the farm is another leader's to plan
        except Exception as e:  # per-farm isolation: one farm's failure is not every farm's
            status, summary, seen = _degraded(o.status, _why(e)), "", []
            if status["problem"] != o.status.get("problem"):
                self._event("farm", o.name, "Degraded", status["problem"])
                if not isinstance(e, PlanError | DescriptorError):
                    log.exception("farm %s: reconcile failed", o.name)
        for kind, message in seen:
            self._event("farm", o.name, kind, message)
        if status != o.status:
            try:
                self.store.set_status("farm", o.name, status)
            except KeyError:  # deleted since this reconcile read it: nothing left to update
                return o.status
            if summary and summary.split(",")[0] != f"+0 -0 ={len(status['instances'])}":
                self._event("farm", o.name, "Planned", summary)
        return status

    def _compact(self) -> None:
        """Now and then, drop tombstones old enough that no watcher should still need them (R28)."""
        if time.monotonic() - self._compacted_at > COMPACT_EVERY_S:
            self._compacted_at = time.monotonic()
            self.store.compact(self.store.revision() - TOMBSTONES_KEPT)


def _vnet_ids(farms: list[Obj]) -> dict[tuple[str, str], int]:
    return {(o.name, k): v for o in farms for k, v in o.status.get("vnet_ids", {}).items()}


def _check_vnet_ids(farm: str, ids: dict[str, int], taken: dict[tuple[str, str], int]) -> None:
    """Reconcile's invariant (audit R6): no VNET id is used by two farms, or their VMs would share
    one segment. The planner allocates against every farm; this is the check that it did."""
    others = {i: f"{f}/{v}" for (f, v), i in taken.items() if f != farm}
    clash = [f"{v} = {i}, already {others[i]}'s" for v, i in sorted(ids.items()) if i in others]
    if clash:
        raise PlanError("VNET ids would be used twice: " + "; ".join(clash) + " (left as it was; report this bug)")


def _why(e: Exception) -> str:
    if isinstance(e, DescriptorError):
        return (f"its stored descriptor no longer validates ({len(e.problems)} problem(s), first: {e.problems[0]}); "
                "apply it again with the problems fixed")
    if isinstance(e, PlanError):
        return f"cannot be planned: {e}"
    return f"internal error while planning it ({type(e).__name__}: {e}); see the manager's log"


def _degraded(status: dict[str, Any], problem: str) -> dict[str, Any]:
    """The farm's last status, kept (its hosts keep running what they ran), marked Degraded."""
    return {**status, "conditions": {**status.get("conditions", {}), "Ready": False, "Degraded": True},
            "problem": problem}
