"""Farms as the API's operations see them: list, read, apply (stored only when the descriptor
validates and the farm can be planned; the answer then lists every problem with its position),
delete, plan (`diff`, `apply --dry-run`), and the event log. A mixin of the Manager. Applying
stores; the controller loop plans (softudc/manager/loop.py).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.farms import FarmCache
from softudc.manager.planner import PlanError
from softudc.manager.store import Conflict, Obj, Store
from softudc.model.farm import validate
from softudc.model.source import DescriptorError

APPLY_WAIT_S = 10.0  # how long an apply waits for the controller loop to plan it before it answers


class FarmOps:
    """The API's farm operations: what the Manager provides them."""

    store: Store
    farms: FarmCache
    _reconcile_lock: threading.RLock

    if TYPE_CHECKING:  # provided by the Manager (or another of its mixins)
        def reports(self) -> dict[str, dict[str, Any]]:
            ...

        def _event(self, kind: str, name: str, type_: str, message: str) -> None:
            ...

        def _plan_one(self, farm: Any, status: dict[str, Any], farms: list[Obj], reports: dict[str, dict[str, Any]]
                      ) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
            ...

        def _retire_vnet_keys(self, farm: str) -> None:
            ...

        def start(self) -> None:
            ...

        def settle(self, timeout: float = 10.0) -> bool:
            ...

    def list_farms(self, who: Principal) -> list[dict[str, Any]]:
        return [{"name": o.name, "revision": o.revision, "vms": sum(v["replicas"] for v in o.spec.get("vms", []))}
                for o in self.store.objects("farm") if who.can_read(o.name)]

    def get_farm(self, who: Principal, name: str) -> dict[str, Any]:
        obj = self.store.get("farm", name)
        if obj is None or not who.can_read(name):  # a farm you may not read does not exist for you
            raise ApiError(404, f"no farm {name!r}")
        return {"name": name, "revision": obj.revision, "spec": obj.spec, "status": obj.status,
                "events": self.store.events("farm", name)}

    def put_farm(self, who: Principal, name: str, text: str, expect: int | None) -> dict[str, Any]:
        if not who.can_write(name):
            raise ApiError(403, f"{who.name} ({who.role}) may not change farm {name!r}")
        try:
            farm = validate(text, f"farms/{name}")
        except DescriptorError as e:
            raise ApiError(400, f"{len(e.problems)} problem(s); nothing was changed",
                           problems=[str(p) for p in e.problems]) from None
        if farm.name != name:
            raise ApiError(400, f"metadata.name is {farm.name!r} but the URL names {name!r}")
        spec = {"descriptor": text, "vnets": [v.name for v in farm.vnets],
                "vms": [{"name": v.name, "replicas": v.replicas} for v in farm.vms]}
        # Planned, then stored, under the lock the controllers' pass holds too. Two applies racing
        # for the last VNET id (or address) can both pass this check before the loop has planned
        # either: the loop then plans them in turn and the second is Degraded, saying why.
        with self._reconcile_lock:
            current = self.store.get("farm", name)
            try:  # a spec that cannot be planned is refused whole, like one that does not validate (R10)
                self._plan_one(farm, current.status if current else {}, self.store.objects("farm"), self.reports())
            except PlanError as e:
                raise ApiError(409, f"farm {name} cannot be planned, nothing was changed: {e}") from None
            try:
                rev = self.store.put("farm", name, spec, expect)
            except Conflict as e:
                raise ApiError(409, str(e)) from None
            self._event("farm", name, "Applied", f"by {who.name}: revision {rev}")
            self.farms.add(name, text, farm)  # parsed once: the loop's pass takes it from the cache
        # The controller loop plans it; the answer waits (bounded) for that, so it carries the
        # status this revision got, as before the loop (a slow pass: the status so far).
        self.settle(APPLY_WAIT_S)
        obj = self.store.get("farm", name)
        return {"name": name, "revision": rev, "status": obj.status if obj else {}}

    def delete_farm(self, who: Principal, name: str) -> dict[str, Any]:
        if not who.can_write(name):
            raise ApiError(403, f"{who.name} ({who.role}) may not delete farm {name!r}")
        with self._reconcile_lock:  # the loop's pass writes farms and keys under it too (loop.py)
            try:
                rev = self.store.delete("farm", name)
            except KeyError:
                raise ApiError(404, f"no farm {name!r}") from None
            self._retire_vnet_keys(name)
        self._event("farm", name, "Deleted", f"by {who.name}")
        self.start()
        return {"name": name, "deleted": True, "revision": rev}

    def plan(self, who: Principal, name: str, text: str) -> dict[str, Any]:
        """What applying `text` would change (`softudc diff`, `apply --dry-run`); stores nothing."""
        exists = self.store.get("farm", name) is not None
        if exists and not who.can_read(name):
            raise ApiError(404, f"no farm {name!r}")
        if not exists and not who.can_write(name):  # planning costs work and shows capacity (R28)
            raise ApiError(403, f"{who.name} ({who.role}) may not plan farm {name!r}: it does not exist, and "
                                "planning a new farm takes a token that may create it")
        try:
            farm = validate(text, f"farms/{name}")
        except DescriptorError as e:
            raise ApiError(400, f"{len(e.problems)} problem(s)", problems=[str(p) for p in e.problems]) from None
        if farm.name != name:
            raise ApiError(400, f"metadata.name is {farm.name!r} but the URL names {name!r}")
        with self._reconcile_lock:
            reports = self.reports()
            farms = self.store.objects("farm")
            current = self.store.get("farm", name)
            try:
                status, summary, _ = self._plan_one(farm, current.status if current else {}, farms, reports)
            except PlanError as e:
                raise ApiError(409, f"farm {name} cannot be planned: {e}") from None
        before = {i["name"]: i for i in (current.status.get("instances", []) if current else [])}
        after = {i["name"]: i for i in status["instances"]}
        create = [after[n] for n in sorted(set(after) - set(before))]
        delete = [before[n] for n in sorted(set(before) - set(after))]
        changed_spec = current is None or current.spec.get("descriptor") != text
        resize = [{"name": i["name"], "host": i["host"], "change": i["change"]} for i in status["instances"]
                  if i.get("change")]
        return {"summary": summary, "create": create, "delete": delete, "unplaced": status["unplaced"],
                "resize": resize,
                "changes": bool(create or delete or status["unplaced"]) or changed_spec}

    def list_events(self, who: Principal, query: dict[str, str]) -> list[dict[str, Any]]:
        """The event log: farms', hosts' and managers' (Leader, SteppedDown) events, newest last;
        non-admins see their farms' only."""
        kind, name = query.get("kind"), query.get("name")
        if kind not in (None, "farm", "host", "manager"):
            raise ApiError(400, f"kind: {kind!r}, expected farm, host or manager")
        limit = query.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise ApiError(400, f"limit: {limit!r}, expected 1..1000")
        if who.role == "admin":
            return self.store.events(kind, name, int(limit))
        if kind in ("host", "manager"):
            raise ApiError(403, f"{who.name} ({who.role}) may read the events of its farms only")
        if name is not None and not who.can_read(name):
            raise ApiError(404, f"no farm {name!r}")
        events = self.store.events("farm", name, 10 * int(limit))
        return [e for e in events if who.can_read(e["name"])][-int(limit):]
