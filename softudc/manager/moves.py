"""Moving an instance to another host, as the API asks for it: admission (the destination is ready
and has room, the source is reporting), the `migrating` record the controllers then drive, and
cancelling a move while that is still safe. A mixin of the Manager: the API calls `m.migrate(...)`
and `m.note_address(...)`."""

from __future__ import annotations

import threading
import time
from typing import Any

from softudc import libvirturi
from softudc.manager import migration, volume_migration
from softudc.manager.auth import Principal
from softudc.manager.controller import HOST_DOWN_AFTER_S, inventory
from softudc.manager.errors import ApiError
from softudc.manager.farms import FARMS, Usage
from softudc.manager.planner import Instance, move_fit
from softudc.manager.store import Conflict, Store
from softudc.manager.workflow import Refused
from softudc.model.farm import Farm, VmDef, validate


class Moves:
    """Migrations: what the Manager provides them (its store, lock, reports, events)."""

    store: Store
    _reconcile_lock: threading.RLock
    _addresses: dict[str, str]  # host -> where its reports come from (migration URIs, R20)

    def reports(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError  # the Manager's

    def _changes_made(self) -> None:
        raise NotImplementedError  # the Manager's

    def _event(self, kind: str, name: str, type_: str, message: str) -> None:
        raise NotImplementedError  # the Manager's

    def migrate(self, who: Principal, name: str, instance: str, body: dict[str, Any]) -> dict[str, Any]:
        """Move an instance to another host: live (the source's gatekeeper migrates it peer to
        peer) or, for `migration: {policy: cold}`, stopped here and started there. The destination
        must be ready and have room under the farm's placement rules; the source must be reporting
        (a silent host may still run the VM, and there is no fencing yet). `{"cancel": true}` gives
        up a move that has not reached the point of no return (see cancel_migration)."""
        if not who.can_write(name):
            raise ApiError(403, f"{who.name} ({who.role}) may not migrate VMs of farm {name!r}")
        to = _destination(body)
        with self._reconcile_lock:
            obj = self.store.get("farm", name)
            if obj is None or not who.can_read(name):
                raise ApiError(404, f"no farm {name!r}")
            farm = validate(obj.spec["descriptor"], name)
            instances = obj.status.get("instances", [])
            inst = next((i for i in instances if i["name"] == instance), None)
            if inst is None:
                raise ApiError(404, f"farm {name} has no instance {instance!r} (see `softudc get vms`)")
            if to is None:
                self._cancel_migration(who, obj, instances, inst)
                return {"farm": name, "instance": inst}
            vm = next(v for v in farm.vms if v.name == inst["vm"])
            uri = self._admit(farm, vm, inst, instances, to)
            now = time.time()
            inst["migrating"] = migration.begin(to, f"{int(now * 1000):x}", now, uri)  # attempt: ms, hex
            self.store.set_status("farm", name, {**obj.status, "instances": instances})
            self._changes_made()
            kind = "live" if uri else "cold"
            self._event("farm", name, "Migrating", f"by {who.name}: {instance} {inst['host']} -> {to} ({kind})")
        return {"farm": name, "instance": inst}

    def _admit(self, farm: Farm, vm: VmDef, inst: dict[str, Any], instances: list[dict[str, Any]],
               to: str) -> str | None:
        """Refuse (ApiError) a move that may not start now; the URI the source dials for a live one
        (None: cold)."""
        instance = inst["name"]
        if vm.migration == "none":
            raise ApiError(409, f"{instance}: its VM {vm.name} has migration policy 'none'")
        if inst.get("migrating"):
            raise ApiError(409, f"{instance} is already moving to {inst['migrating']['to']}; wait for it, or "
                                "cancel it (POST this route with {\"cancel\": true})")
        if inst["host"] == to:
            raise ApiError(409, f"{instance} already runs on {to}")
        if refused := volume_migration.refusal(instance, vm, inst["host"], vm.migration == "live"):
            raise ApiError(409, refused)  # local volumes (issue 13 item 5)
        reports = self.reports()
        source = reports.get(inst["host"], {})
        if source.get("state", "down") == "down":
            raise ApiError(409, f"{inst['host']} is down (no report for {HOST_DOWN_AFTER_S:.0f} s): the manager "
                                f"cannot tell whether {instance} still runs there, and without fencing a move "
                                f"could start a second copy. Bring {inst['host']}'s gatekeeper back and try "
                                "again; if the host is gone for good, power it off before recovering its VMs")
        report = reports.get(to)
        if report is None or "vcpus" not in report:
            raise ApiError(404, f"no host {to!r} has reported to this manager (see `softudc host list`)")
        # Room and rules as the planner sees them: every other farm's usage, this farm's by plan_farm's rules.
        usage = Usage([(o.name, FARMS.for_hosts(o), o.status) for o in self.store.objects("farm")])
        current = [Instance(i["name"], i["vm"], i["host"], migrating=i.get("migrating")) for i in instances]
        why = move_fit(farm, usage.hosts(inventory(reports), farm.name), current, instance, to)
        if why:
            raise ApiError(409, f"{instance} does not fit on {to}: " + "; ".join(why))
        return self._migration_uri(to, report) if vm.migration == "live" else None

    def _cancel_migration(self, who: Principal, obj: Any, instances: list[dict[str, Any]],
                          inst: dict[str, Any]) -> None:
        """Give up a move while that is safe: a cold one until it completes (the destination starts
        the VM only once the source has confirmed it stopped, and the source then simply runs it
        again), a live one until its source has been told to start it. After that only the outcome
        the hosts report ends it: libvirt gives up by itself after 300 s."""
        moving = inst.get("migrating")
        if not moving:
            raise ApiError(409, f"{inst['name']} is not moving; nothing to cancel")
        try:
            migration.cancel(moving, time.time())
        except Refused:
            raise ApiError(409, f"{inst['name']}: the live migration to {moving['to']} is in its source's hands "
                                f"({moving.get('state', '?')}) and cannot be called back safely; it ends by itself "
                                "(libvirt aborts it after 300 s) and the farm's events will say how") from None
        del inst["migrating"]
        self.store.set_status("farm", obj.name, {**obj.status, "instances": instances})
        self._changes_made()
        self._event("farm", obj.name, "MigrationCancelled", f"by {who.name}: {inst['name']} stays on {inst['host']} "
                                                            f"(was moving to {moving['to']})")

    def note_address(self, host: str, address: str) -> None:
        """The address a host's authenticated report came from: its migration URI must name it (R20).
        Kept in the host's object too (written only when it changes), so that every manager of a
        group knows it, whichever the host reports to. One entry per joined host (the caller has
        authenticated it), so the table is bounded."""
        if self._addresses.get(host) == address:
            return
        obj = self.store.get("host", host)
        if obj is not None and obj.spec.get("address") != address:
            try:
                self.store.put("host", host, {**obj.spec, "address": address}, expect=obj.revision)
            except Conflict:
                return  # changed meanwhile (a re-join, an admin's state): the next report writes it
        self._addresses[host] = address

    def address_noted(self, host: str, address: str) -> bool:
        """Whether `note_address(host, address)` would change nothing (from memory)."""
        return self._addresses.get(host) == address

    def _address_of(self, host: str) -> str | None:
        """Where `host` reports from: as this manager saw it, else as another manager stored it."""
        known = self._addresses.get(host)
        if known is None and (obj := self.store.get("host", host)) is not None:
            stored = obj.spec.get("address")
            known = stored if isinstance(stored, str) else None
        return known

    def _migration_uri(self, to: str, report: dict[str, Any]) -> str:
        """The URI the source's libvirtd will connect to, built here (audit R20): never what the
        destination reported verbatim."""
        reported = report.get("migration_uri")
        if not reported:
            raise ApiError(409, f"{to} accepts no live migrations: its gatekeeper has no hypervisor.migration_uri")
        try:
            return libvirturi.for_host(str(reported), self._address_of(to))
        except libvirturi.MigrationUriError as e:
            raise ApiError(409, f"{to}: its migration_uri is refused: {e}") from None


def _destination(body: dict[str, Any]) -> str | None:
    """The host a migrate request names, None for `{"cancel": true}`; ApiError for anything else."""
    cancel = body.get("cancel", False)
    if not isinstance(cancel, bool):
        raise ApiError(400, "body: 'cancel' must be true or false")
    to = body.get("to")
    if cancel:
        return None
    if not isinstance(to, str) or not to:
        raise ApiError(400, "body: 'to' must name the destination host (or send {\"cancel\": true})")
    return to
