"""The manager's service: farms, hosts, migrations, VNET keys and the reconcile loop, independent of
HTTP (`api` maps routes onto it). Farms are stored only when their descriptor validates; the
answer then lists every problem with its position.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from softudc.atomicfile import create_exclusive, private_dir, write_atomic
from softudc.manager import vnetkeys
from softudc.manager.auth import Principal, TokenStore
from softudc.manager.controller import HOST_DOWN_AFTER_S, inventory, reconcile_farm
from softudc.manager.desired import desired_json
from softudc.manager.errors import ApiError as ApiError  # raised by the API's operations; importers find it here
from softudc.manager.farms import FARMS, FarmCache, Usage
from softudc.manager.longpoll import MAX_WAIT_S as MAX_WAIT_S  # the longest long poll; importers find it here
from softudc.manager.longpoll import LongPolls
from softudc.manager.metrics import make_registry
from softudc.manager.moves import Moves
from softudc.manager.planner import PlanError
from softudc.manager.reports import report_problems, visible_to
from softudc.manager.store import Conflict, Obj, SqliteStore
from softudc.model.farm import validate
from softudc.model.source import DescriptorError
from softudc.pki import CertificateAuthority, PkiError, fingerprint

HOST_STATES = ("ready", "draining", "maintenance")  # what an admin sets; `down` the manager decides
RECONCILE_EVERY_S = 10.0  # a report that changes nothing still reconciles this often (time-based rules)
COMPACT_EVERY_S = 60.0
TOMBSTONES_KEPT = 10_000  # revisions a tombstone outlives its delete (watchers further behind list again)
log = logging.getLogger("softudc.manager")


class Manager(Moves):
    """The manager's state and the API's operations, independent of HTTP."""

    key_rotation_every_s: float | None = vnetkeys.ROTATE_EVERY_S  # VNET key rotation schedule; None: on demand only
    key_rotation_step_s: float = vnetkeys.ROTATION_STEP_S  # between a rotation's steps

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = private_dir(state_dir)  # 0700 even when an older version made it 0755
        self.store = SqliteStore(state_dir / "state.db")
        self.tokens = TokenStore(state_dir / "tokens.json")
        self.ca = CertificateAuthority.load(state_dir / "pki")
        self._reconcile_lock = threading.RLock()
        self.farms: FarmCache = FARMS  # validated descriptors, parsed once per text (audit R11)
        # Desired state per host, cached per reconcile generation; long polls wake only when their
        # host's etag moved (audit R11).
        self.polls = LongPolls(lambda host: self._desired(host))
        self._reconciled_at = 0.0  # monotonic; a report that changes nothing skips reconcile shortly after
        self._busy = True  # a migration is under way (every report may move it on): never skip then
        self._compacted_at = 0.0
        self.registry, self.requests, self.events = make_registry(self.store, self.reports)
        self._addresses: dict[str, str] = {}  # host -> where its reports come from (migration URIs, R20)

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
        from softudc.manager.store import Conflict

        with self._reconcile_lock:  # planned, then stored: nothing can take the last VNET id in between
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
            self.reconcile()
        obj = self.store.get("farm", name)
        return {"name": name, "revision": rev, "status": obj.status if obj else {}}

    def delete_farm(self, who: Principal, name: str) -> dict[str, Any]:
        if not who.can_write(name):
            raise ApiError(403, f"{who.name} ({who.role}) may not delete farm {name!r}")
        try:
            rev = self.store.delete("farm", name)
        except KeyError:
            raise ApiError(404, f"no farm {name!r}") from None
        self._retire_vnet_keys(name)
        self._event("farm", name, "Deleted", f"by {who.name}")
        self.reconcile()
        return {"name": name, "deleted": True, "revision": rev}

    def _event(self, kind: str, name: str, type_: str, message: str) -> None:
        self.store.event(kind, name, type_, message)
        self.events.labels(type_).inc()

    def reports(self) -> dict[str, dict[str, Any]]:
        """Each host's last report with the state placement goes by: the one an admin set
        (draining, maintenance) or ready; `down` when it has not reported for HOST_DOWN_AFTER_S."""
        now = time.time()
        out = {}
        for o in self.store.objects("host"):
            state = o.spec.get("state", "ready")
            if now - float(o.status.get("reported", 0)) > HOST_DOWN_AFTER_S:
                state = "down"
            out[o.name] = {**o.status, "state": state}
        return out

    def set_host_state(self, who: Principal, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """An admin takes a host out of placement (draining, maintenance) or back (ready). VMs
        already there stay; new ones go elsewhere."""
        if who.role != "admin":
            raise ApiError(403, f"{who.name} ({who.role}) may not change hosts; that takes an admin token")
        state = body.get("state")
        if state not in HOST_STATES:
            raise ApiError(400, f"state: {state!r}, expected one of {', '.join(HOST_STATES)}")
        obj = self.store.get("host", name)
        if obj is None:
            raise ApiError(404, f"no host {name!r} has joined this manager")
        self.store.put("host", name, {**obj.spec, "state": state})
        self._event("host", name, "State", f"by {who.name}: {obj.spec.get('state', 'ready')} -> {state}")
        self.reconcile()
        return {"host": name, "state": state}

    def list_events(self, who: Principal, query: dict[str, str]) -> list[dict[str, Any]]:
        """The event log: farms' and hosts' events, newest last; non-admins see their farms' only."""
        kind, name = query.get("kind"), query.get("name")
        if kind not in (None, "farm", "host"):
            raise ApiError(400, f"kind: {kind!r}, expected farm or host")
        limit = query.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise ApiError(400, f"limit: {limit!r}, expected 1..1000")
        if who.role == "admin":
            return self.store.events(kind, name, int(limit))
        if kind == "host":
            raise ApiError(403, f"{who.name} ({who.role}) may read the events of its farms only")
        if name is not None and not who.can_read(name):
            raise ApiError(404, f"no farm {name!r}")
        events = self.store.events("farm", name, 10 * int(limit))
        return [e for e in events if who.can_read(e["name"])][-int(limit):]

    def list_hosts(self, who: Principal) -> list[dict[str, Any]]:
        """Hosts with their last report and what the farms take of them (VMs, vCPUs, memory)."""
        objs = self.store.objects("host")
        reports = self.reports()
        hosts = {h.name: h for h in self._usage(self.store.objects("farm")).hosts(inventory(reports))}
        out = []
        for o in objs:
            h = hosts.get(o.name)
            used = {"used_vcpus": h.used_vcpus, "used_memory_mib": h.used_memory_mib} if h else {}
            out.append({"name": o.name, "revision": o.revision, **visible_to(who, o.status), **used,
                        "state": reports[o.name].get("state", "joined")})
        return out

    def join(self, body: dict[str, Any]) -> dict[str, Any]:
        """A gatekeeper joins with a one-time token and a CSR. The host name is bound to the new
        certificate (its fingerprint is stored): any certificate it had before is refused from
        now on, so a re-installed or cloned machine with an old certificate cannot act as it."""
        try:
            host, cert = self.ca.join(str(body.get("token", "")), str(body.get("csr", "")).encode())
        except PkiError as e:
            raise ApiError(403, str(e)) from None
        except ValueError as e:
            raise ApiError(400, f"csr: not a PEM certificate request ({e}); send the CSR the gatekeeper "
                                "made, in PEM") from None
        old = self.store.get("host", host)
        # `state` (an admin's draining/maintenance) is kept across a re-join; the certificate is not.
        self.store.put("host", host, {**(old.spec if old else {}), "joined": time.time(),
                                      "certificate": fingerprint(cert)})
        if old is not None:
            self._event("host", host, "Rejoined", "a new certificate; the ones it had before are refused from now on")
        return {"host": host, "certificate": cert.decode(), "ca": self.ca.cert_pem.decode()}

    def authenticate_host(self, name: str, peer_cn: str | None, peer_fingerprint: str | None) -> None:
        """Gatekeeper routes: the client certificate must name `name` and be the one `name` got
        at its latest join. A host that joined before certificates were recorded is bound to the
        first certificate it shows (its gatekeeper reports every few seconds, so that is almost
        surely its own; if not, the real host is refused, says so, and joins again)."""
        if peer_cn is None or peer_fingerprint is None:
            raise ApiError(403, "gatekeeper routes need a client certificate from this manager's CA (join first)")
        if peer_cn != name:
            raise ApiError(403, f"this certificate belongs to {peer_cn!r}, not {name!r}")
        obj = self.store.get("host", name)
        if obj is None:
            raise ApiError(403, f"host {name!r} is not joined to this manager (never joined, or removed); "
                                "join it with a new token")
        bound = obj.spec.get("certificate")
        if bound is None:
            try:  # compare-and-swap: of two first certificates at once, one is bound and the other refused
                self.store.put("host", name, {**obj.spec, "certificate": peer_fingerprint}, expect=obj.revision)
            except Conflict:
                return self.authenticate_host(name, peer_cn, peer_fingerprint)
            self._event("host", name, "Bound", "joined before certificates were recorded: bound to the certificate "
                                               "it showed now; any other is refused (join again to change it)")
        elif bound != peer_fingerprint:
            raise ApiError(403, f"this certificate of {name!r} is superseded: the host was joined again since; "
                                "if this machine should be that host, join it again with a new token")

    def delete_host(self, who: Principal, name: str, force: bool = False) -> dict[str, Any]:
        """An admin removes a host: its certificate is refused from then on, and it takes no VMs.
        Refused while instances are placed there, unless `force` (they then stay assigned to the
        removed host until moved: use it for a host that is gone for good or not to be trusted)."""
        if who.role != "admin":
            raise ApiError(403, f"{who.name} ({who.role}) may not remove hosts; that takes an admin token")
        if self.store.get("host", name) is None:
            raise ApiError(404, f"no host {name!r} has joined this manager (see `softudc host list`)")
        placed = sorted(f"{o.name}/{i['name']}" for o in self.store.objects("farm")
                        for i in o.status.get("instances", []) if i.get("host") == name)
        if placed and not force:
            raise ApiError(409, f"{name} still has {len(placed)} instance(s): {', '.join(placed)}; migrate them "
                                "away first (softudc vm migrate), or remove it anyway with force", instances=placed)
        self.store.delete("host", name)
        self._event("host", name, "Removed", f"by {who.name}: its certificate is refused from now on" +
                    (f"; instances still assigned to it: {', '.join(placed)}" if placed else ""))
        self.reconcile()
        return {"host": name, "removed": True, "instances": placed}

    def host_status(self, peer_cn: str | None, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if peer_cn is None:
            raise ApiError(403, "gatekeeper routes need a client certificate from this manager's CA (join first)")
        if peer_cn != name:
            raise ApiError(403, f"this certificate belongs to {peer_cn!r}, not {name!r}")
        before = self.store.get("host", name)
        if before is None:
            raise ApiError(404, f"host {name!r} never joined")
        problems = report_problems(body)
        if problems:  # one broken gatekeeper must not break planning for every farm
            raise ApiError(400, f"report from {name} refused, nothing stored: " + "; ".join(problems) +
                           "; fix the gatekeeper (or upgrade it to this manager's version)")
        now = time.time()
        self.store.set_status("host", name, {**body, "reported": now})
        if self._news(before.status, body, now):
            self.reconcile()
        return {"host": name, "stored": True}

    def _news(self, before: dict[str, Any], body: dict[str, Any], now: float) -> bool:
        """Whether a report may change any plan (audit R11). Not when it says what the host's last
        one said (only `reported` moved), that one was recent (the host was not down), no migration
        is under way (each report may move one on) and a reconcile ran lately (rules that depend on
        time alone, such as a stalled migration or a silent host, still run every few seconds)."""
        same = {k: v for k, v in before.items() if k != "reported"} == {k: v for k, v in body.items()
                                                                         if k != "reported"}
        fresh = now - float(before.get("reported", 0)) <= HOST_DOWN_AFTER_S
        recent = time.monotonic() - self._reconciled_at < RECONCILE_EVERY_S
        return not (same and fresh and recent and not self._busy)

    def desired(self, peer_cn: str | None, name: str, since: str = "", wait: float = 0.0) -> dict[str, Any]:
        """What a gatekeeper should run now (mutual TLS only: its certificate names the host), with
        an `etag`; cached per reconcile generation. Given the etag it has (`since`) and `wait`, a
        long poll that holds the calling thread (the threaded server's way; the ASGI route awaits
        wait_desired instead)."""
        self._check_peer(peer_cn, name)
        if wait <= 0:
            return self.polls.current(name)
        return self.polls.wait(name, since, wait)

    async def wait_desired(self, peer_cn: str | None, name: str, since: str, wait: float) -> dict[str, Any]:
        """The long poll: the host's desired state once its etag differs from `since`, or after
        `wait` seconds (at most MAX_WAIT_S). Awaits on the running event loop without holding a
        thread; the controllers wake it only when this host's etag moved."""
        self._check_peer(peer_cn, name)
        return await self.polls.wait_async(name, since, wait)

    def long_polls_waiting(self) -> int:
        return self.polls.waiting()

    @staticmethod
    def _check_peer(peer_cn: str | None, name: str) -> None:
        if peer_cn is None or peer_cn != name:
            raise ApiError(403, "gatekeeper routes need this host's client certificate from the manager's CA")

    @property
    def _waiting(self) -> dict[str, int]:
        return self.polls.waiting_hosts()

    def _changes_made(self, hosts: Iterable[str] | None = None) -> None:
        """A change made outside reconcile (a migration, keys): the next reports reconcile even if
        they say nothing new, and the long polls whose state moved wake. With `hosts`: wake theirs."""
        if hosts is not None:
            self.polls.wake(list(hosts))
            return
        self._busy = True
        self.polls.new_generation()

    def _desired(self, name: str) -> dict[str, Any]:
        with self._reconcile_lock:
            farms = [(f, o.status) for o in self.store.objects("farm") if (f := self.farms.for_hosts(o))]
            # The contract's DesiredState, validated, as JSON in the version the host speaks.
            return desired_json(name, farms, self.reports(), self._vnet_keys)

    def _vnet_keys(self, farm: str, vnet: str) -> dict[str, Any]:
        """A VNET's master secrets by epoch and its send epoch: made by the manager per (farm,
        VNET) incarnation, rotated on a schedule (softudc/manager/vnetkeys.py), handed only to
        gatekeepers (over mutual TLS), never shown in a farm's status."""
        name, now = f"{farm}/{vnet}", time.time()
        obj = self.store.get("vnetkey", name)
        if obj is not None:
            record = vnetkeys.upgrade(obj.spec, now)  # a record from before epochs had entries
        else:
            record = vnetkeys.new_record(now, self._next_key_epoch())
        if vnetkeys.due(record, now, self.key_rotation_every_s):
            record = vnetkeys.start_rotation(record, now, self._next_key_epoch(vnetkeys.live_epochs(record)))
        record = vnetkeys.advance(record, now, self.key_rotation_step_s)
        if obj is None or record != obj.spec:
            self.store.put("vnetkey", name, {**record, "farm": farm, "vnet": vnet})
            if obj is not None:
                self._event("farm", farm, "KeysRotated", f"VNET {vnet}: send epoch {record['send_epoch']}, "
                                                         f"epochs {sorted(int(e) for e in record['epochs'])}")
                self._changes_made()  # the next step reaches the hosts now, not at their next poll
        return vnetkeys.for_hosts(record, farm, vnet)

    def _next_key_epoch(self, live: set[int] | None = None) -> int:
        """A manager-wide epoch counter: a VNET id's next owner never reuses its SPIs; never one
        of the `live` epochs of the VNET it is for."""
        obj = self.store.get("keyepoch", "counter")
        epoch = vnetkeys.next_epoch(int(obj.spec["last"]) if obj else 0, live or set())
        self.store.put("keyepoch", "counter", {"last": epoch})
        return epoch

    def rotate_vnet_keys(self, farm: str, vnet: str | None = None) -> list[str]:
        """Start a key rotation of one VNET of `farm` now, or of all of them; returns which. The
        steps then follow `key_rotation_step_s` apart (docs/manager.md, Keys)."""
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
                                    "the first host fetches its desired state)")
        self._changes_made()
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
        """A deleted farm's secrets go with it: a farm made again under its name gets new ones."""
        for o in self.store.objects("vnetkey"):
            if o.spec.get("farm") == farm:
                self.store.delete("vnetkey", o.name)

    def _usage(self, farms: list[Obj]) -> Usage:
        return Usage([(o.name, self.farms.for_hosts(o), o.status) for o in farms])

    def _plan_one(self, farm: Any, status: dict[str, Any], farms: list[Obj], reports: dict[str, dict[str, Any]],
                  usage: Usage | None = None, taken: dict[tuple[str, str], int] | None = None
                  ) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
        """One farm's next status against the hosts, the other farms' usage counted. Raises
        PlanError, also when its VNET ids would clash with another farm's (never stored)."""
        usage = usage or self._usage(farms)
        taken = _vnet_ids(farms) if taken is None else taken
        hosts = usage.hosts(inventory(reports), farm.name)
        planned = reconcile_farm(farm, status, hosts, taken, reports, time.time())
        _check_vnet_ids(farm.name, planned[0]["vnet_ids"], taken)
        return planned

    def reconcile(self) -> None:
        """Re-plan every farm against the hosts' latest reports; store statuses; log changes. Each
        farm is planned once, against the usage of all farms summed once; a farm that fails is
        Degraded on its own (audit R10, R11)."""
        with self._reconcile_lock:
            reports = self.reports()
            farms = self.store.objects("farm")
            usage, taken, busy = self._usage(farms), _vnet_ids(farms), False
            for o in farms:
                status = self._reconcile_farm(o, farms, reports, usage, taken)
                for vnet in o.status.get("vnet_ids", {}):  # its old ids (read into `taken`) make way
                    taken.pop((o.name, vnet), None)
                taken.update({(o.name, k): v for k, v in status.get("vnet_ids", {}).items()})
                usage.update(o.name, self.farms.for_hosts(o), status)
                busy = busy or any(i.get("migrating") for i in status.get("instances", []))
            self._busy, self._reconciled_at = busy, time.monotonic()
            self._compact()
        self.polls.new_generation()

    def _reconcile_farm(self, o: Obj, farms: list[Obj], reports: dict[str, dict[str, Any]], usage: Usage,
                        taken: dict[tuple[str, str], int]) -> dict[str, Any]:
        """One farm's step, isolated: whatever goes wrong becomes that farm's Degraded condition with
        the reason (and an event when the reason is new); the other farms go on. Its hosts keep
        what they had."""
        try:
            status, summary, seen = self._plan_one(self.farms.farm(o), o.status, farms, reports, usage, taken)
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


def init(state_dir: Path, addresses: list[str]) -> str:
    """`softudc init`: the CA, the API's server certificate, the store; returns an admin token."""
    private_dir(state_dir)  # the store holds every VNET secret: 0700, its files 0600
    ca = CertificateAuthority.create(state_dir / "pki")
    issued = ca.issue_server("softudc-manager", addresses)
    write_atomic(state_dir / "pki" / "server.crt", issued.cert_pem, 0o644)
    create_exclusive(state_dir / "pki" / "server.key", issued.key_pem)  # 0600 from its first byte
    SqliteStore(state_dir / "state.db").close()
    return TokenStore(state_dir / "tokens.json").create("admin", "admin")
