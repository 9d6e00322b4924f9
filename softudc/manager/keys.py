"""The manager's VNET keys (softudc/manager/vnetkeys.py has the pure rules): made and rotated by
the controller loop's passes, read when a host's desired state is served, rotated on demand by an
admin or operator. A mixin of the Manager.

Serving a desired state writes nothing: the pass makes the keys of every VNET a farm's status
names and moves rotations on (a step is due `key_rotation_step_s` after the last; the loop's
timer brings it within RECONCILE_EVERY_S). Only a VNET that has no record yet when it is served
(a store written by an older manager, before the loop's first pass) gets one made there and then.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from softudc.manager import vnetkeys
from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.store import Obj, Store


class Keys:
    """VNET keys: what the Manager provides them (its store, lock and event log)."""

    store: Store
    _reconcile_lock: threading.RLock
    key_rotation_every_s: float | None = vnetkeys.ROTATE_EVERY_S  # VNET key rotation schedule; None: on demand only
    key_rotation_step_s: float = vnetkeys.ROTATION_STEP_S  # between a rotation's steps

    if TYPE_CHECKING:  # provided by the Manager (or another of its mixins)
        def _event(self, kind: str, name: str, type_: str, message: str) -> None:
            ...

        def start(self) -> None:
            ...

    def _vnet_keys(self, farm: str, vnet: str) -> dict[str, Any]:
        """A VNET's master secrets by epoch and its send epoch, as gatekeepers get them (over
        mutual TLS only; never shown in a farm's status)."""
        obj = self.store.get("vnetkey", f"{farm}/{vnet}")
        if obj is None or "epochs" not in obj.spec:  # not made (or upgraded) by a pass yet
            with self._reconcile_lock:
                record = self._step_keys(farm, vnet, self.store.get("vnetkey", f"{farm}/{vnet}"), time.time())
            return vnetkeys.for_hosts(record, farm, vnet)
        return vnetkeys.for_hosts(obj.spec, farm, vnet)

    def _advance_keys(self, statuses: list[tuple[str, dict[str, Any]]]) -> None:
        """In a pass (the lock held): every VNET with an id in a farm's status has keys, and every
        rotation whose step is due takes it."""
        now = time.time()
        stored = {o.name: o for o in self.store.objects("vnetkey")}
        for farm, status in statuses:
            for vnet in sorted(status.get("vnet_ids", {})):
                self._step_keys(farm, vnet, stored.get(f"{farm}/{vnet}"), now)

    def _step_keys(self, farm: str, vnet: str, obj: Obj | None, now: float) -> dict[str, Any]:
        """The VNET's record made, upgraded, rotated when due and advanced; stored if it changed."""
        if obj is not None:
            record = vnetkeys.upgrade(obj.spec, now)  # a record from before epochs had entries
        else:
            record = vnetkeys.new_record(now, self._next_key_epoch())
        if vnetkeys.due(record, now, self.key_rotation_every_s):
            record = vnetkeys.start_rotation(record, now, self._next_key_epoch(vnetkeys.live_epochs(record)))
        record = vnetkeys.advance(record, now, self.key_rotation_step_s)
        if obj is None or record != obj.spec:
            record = {**record, "farm": farm, "vnet": vnet}
            self.store.put("vnetkey", f"{farm}/{vnet}", record)
            if obj is not None:
                self._event("farm", farm, "KeysRotated", f"VNET {vnet}: send epoch {record['send_epoch']}, "
                                                         f"epochs {sorted(int(e) for e in record['epochs'])}")
        return record

    def _next_key_epoch(self, live: set[int] | None = None) -> int:
        """A manager-wide epoch counter: a VNET id's next owner never reuses its SPIs; never one
        of the `live` epochs of the VNET it is for."""
        obj = self.store.get("keyepoch", "counter")
        epoch = vnetkeys.next_epoch(int(obj.spec["last"]) if obj else 0, live or set())
        self.store.put("keyepoch", "counter", {"last": epoch})
        return epoch

    def rotate_vnet_keys(self, farm: str, vnet: str | None = None) -> list[str]:
        """Start a key rotation of one VNET of `farm` now, or of all of them; returns which. The
        steps then follow `key_rotation_step_s` apart (docs/manager.md, Keys); the hosts hear of
        the first once the controller loop has seen the new record."""
        with self._reconcile_lock:
            started = []
            for o in self.store.objects("vnetkey"):
                if o.spec.get("farm") != farm or (vnet is not None and o.spec.get("vnet") != vnet):
                    continue
                if vnet is None and "rotation" in o.spec:
                    continue  # all of them: those rotating already go on as they are
                try:
                    record = vnetkeys.upgrade(o.spec, time.time())
                    record = vnetkeys.start_rotation(record, time.time(),
                                                     self._next_key_epoch(vnetkeys.live_epochs(record)))
                except ValueError as e:
                    raise ApiError(409, f"farm {farm} VNET {o.spec.get('vnet')}: {e}") from None
                self.store.put("vnetkey", o.name, record)
                started.append(str(o.spec.get("vnet")))
            if not started:
                raise ApiError(404, f"farm {farm!r} has no VNET {vnet or ''} with keys yet (keys are made when "
                                    "the farm is planned; apply it, or check the VNET's name)")
        self.start()  # the loop sees the new records and lets the hosts' long polls go
        return started

    def rotate_keys(self, who: Principal, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/farms/{name}/keys/rotate` ({"vnet": NAME} for one): new keys for a farm's VNETs."""
        if not who.can_read(name) or self.store.get("farm", name) is None:
            raise ApiError(404, f"no farm {name!r}")
        if not who.can_write(name):
            raise ApiError(403, f"{who.name} ({who.role}) may not rotate the keys of farm {name!r}")
        vnet = body.get("vnet")
        if vnet is not None and not isinstance(vnet, str):
            raise ApiError(400, f"vnet: {vnet!r}; expected the name of one of the farm's VNETs, or no vnet for all")
        started = self.rotate_vnet_keys(name, vnet)
        self._event("farm", name, "KeysRotating", f"by {who.name}: {', '.join(started) or 'nothing to start'}")
        return {"farm": name, "rotating": started, "step_s": self.key_rotation_step_s}

    def _retire_vnet_keys(self, farm: str) -> None:
        """A deleted farm's secrets go with it: a farm made again under its name gets new ones
        (the caller holds the lock)."""
        for o in self.store.objects("vnetkey"):
            if o.spec.get("farm") == farm:
                self.store.delete("vnetkey", o.name)
