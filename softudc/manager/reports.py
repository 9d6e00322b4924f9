"""What a gatekeeper's report may hold and who may see which part of it: every field and nested
value checked against the contract (softudc/model/hoststate.py HostReport) before anything is
stored (one broken host must not break planning for every farm, audit R10), and an allow-list of
what a non-admin sees, filtered by farm (R24). StoredHosts: each host's stored report as the
store holds it now, which a new report is compared with (a report that says nothing new is a
heartbeat, softudc/manager/heartbeats.py)."""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from softudc.manager.auth import Principal
from softudc.manager.heartbeats import KIND as HEARTBEAT
from softudc.manager.heartbeats import merge_seen
from softudc.manager.store import Obj, Store
from softudc.model.hoststate import HostReport, problems_of, split_vm_name

log = logging.getLogger("softudc.manager.reports")


def report_problems(body: dict[str, Any]) -> list[str]:
    """Everything wrong with a gatekeeper's report, each named (at most 50). Unknown fields are
    refused for the contract version the report claims (absent: 1, today's gatekeepers), so a
    field only a newer gatekeeper sends says to upgrade the managers first."""
    return problems_of(HostReport, body)


def ipv4_or_none(text: Any) -> str | None:
    """`text` if it is an IPv4 address (a report's `underlay`), else None."""
    try:
        return str(ipaddress.IPv4Address(text)) if isinstance(text, str) else None
    except ValueError:
        return None


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


# --- each host's stored report, as the store holds it now ------------------------------------------

REFRESH_S = 20.0  # a report that says nothing new is still stored when the stored one is this old
# (below HOST_DOWN_AFTER_S less a report period: the loop takes a gap over that for a host back up)
PEEK_EVERY_S = 0.1  # how stale `peek` may be: its thread looks at the store this often
MAX_BEHIND = 1000  # revisions; further behind, StoredHosts reads everything again (tombstones are
# compacted TOMBSTONES_KEPT revisions after a delete: a deleted host must not stay in the cache)


def same_report(status: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether a report says exactly what a stored status says (all of it but `reported`)."""
    return len(status) - ("reported" in status) == len(body) and \
        all(k != "reported" and status.get(k, _ABSENT) == v for k, v in body.items())


_ABSENT = object()


def _migrating(farm: Obj) -> bool:
    return any(isinstance(i, dict) and i.get("migrating") for i in farm.status.get("instances", []))


class StoredHosts:
    """Each host object as the store holds it now, and whether a migration is under way, kept by
    reading the store's changes since the last look: one `revision()` per look when nothing was
    written, a `changes()` when something was. Fed by the store, never by guesses: a host that
    reported to another manager meanwhile, was removed or joined again is seen at the next look."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._hosts: dict[str, Obj] = {}
        self._sorted: list[Obj] | None = None  # _hosts by name, made again after a host changed
        self._beats: dict[str, Obj] = {}  # every manager's heartbeat object
        self._seen: dict[str, float] | None = None  # merged from _beats, made again after one changed
        self._migrating: set[str] = set()  # farms with an instance on the move
        self._revision = -1  # everything up to this revision is in
        self.loads = 0  # full reads (a metric; tests count them)
        self._flight = threading.Condition(threading.Lock())  # looks at the store: one at a time, shared
        self._started = self._finished = 0  # looks begun; the latest one done
        self._looking = False
        self._peeker: threading.Thread | None = None  # keeps the cache current for `peek` (made at first use)
        self._closed = threading.Event()

    def snapshot(self, now: float) -> tuple[list[Obj], dict[str, float], int]:
        """Every host object by name, each host's newest heartbeat over the managers' flushed
        books, and the store revision they are as of. Shared with the cache: read them, never
        change them."""
        self.refresh()
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted(self._hosts.values(), key=lambda o: o.name)
            if self._seen is None:
                self._seen = merge_seen(self._beats.values(), now)
            return self._sorted, self._seen, self._revision

    def get(self, name: str) -> Obj | None:
        """The host object as stored now (None: not joined, or removed)."""
        self.refresh()
        with self._lock:
            return self._hosts.get(name)

    def peek(self, name: str) -> Obj | None:
        """The host object as of a look at most about PEEK_EVERY_S ago, without reading the store:
        what the requests of gatekeepers (thousands a second) go by on the server's event loop. A
        thread keeps looking (started by the first peek). Callers act on it only where a stale
        answer sends them to `get` (a certificate not the one cached, say) or costs nothing (a
        report taken for a heartbeat is stored when it is REFRESH_S old anyway)."""
        if self._peeker is None:
            with self._lock:
                if self._peeker is None and not self._closed.is_set():
                    self._peeker = threading.Thread(target=self._keep_looking, name="softudc-stored-hosts",
                                                    daemon=True)
                    self._peeker.start()
        with self._lock:
            return self._hosts.get(name) if self._revision >= 0 else None

    def close(self) -> None:
        """Stop the thread that keeps the cache current for `peek`."""
        self._closed.set()
        if self._peeker is not None and self._peeker is not threading.current_thread():
            self._peeker.join(5)

    def _keep_looking(self) -> None:
        while not self._closed.wait(PEEK_EVERY_S):
            try:
                self.refresh()
            except Exception as e:  # a store that does not answer now: looked at again next time
                log.warning("hosts cache: the store did not answer (%s); trying again", e)
                self._closed.wait(1.0)

    def busy(self) -> bool:
        """Whether a migration is under way (a farm's status has an instance `migrating`), as of
        the last look."""
        with self._lock:
            return bool(self._migrating)

    def refresh(self) -> None:
        """Bring the cache to the store's revision as of this call, or later. Concurrent callers share
        looks: each waits for one that began after it called (so none is answered from before its
        call), and the store is read by one look at a time, outside the cache's lock (on etcd a look
        is a round trip: reports must not queue behind each other's)."""
        with self._flight:
            need = self._started + 1  # the first look that begins from now on will do
            while self._finished < need:
                if not self._looking:
                    self._looking, self._started = True, self._started + 1
                    mine = self._started
                    break
                self._flight.wait()
            else:
                return
        done = False
        try:
            self._look()
            done = True
        finally:
            with self._flight:
                self._looking = False
                if done:
                    self._finished = mine
                self._flight.notify_all()

    def _look(self) -> None:
        now = self.store.revision()
        with self._lock:
            since = self._revision
        if now == since:
            return
        if since < 0 or now - since > MAX_BEHIND:
            self._load(now)
            return
        try:
            changes = self.store.changes(since)
        except Exception:  # whatever the store could not answer: read it all
            self._load(now)
            return
        with self._lock:
            for o in changes:
                self._apply(o)
            self._revision = max([now, *(o.revision for o in changes)])

    def _load(self, now: int) -> None:
        """Everything read again; objects written meanwhile come again as changes."""
        hosts = {o.name: o for o in self.store.objects("host")}
        beats = {o.name: o for o in self.store.objects(HEARTBEAT)}
        migrating = {o.name for o in self.store.objects("farm") if _migrating(o)}
        with self._lock:
            self._hosts, self._beats, self._migrating = hosts, beats, migrating
            self._sorted = self._seen = None
            self._revision = now
            self.loads += 1

    def _apply(self, o: Obj) -> None:
        if o.kind in ("host", HEARTBEAT):
            objs = self._hosts if o.kind == "host" else self._beats
            old = objs.get(o.name)
            if old is not None and old.revision > o.revision:
                return
            if o.deleted:
                objs.pop(o.name, None)
            else:
                objs[o.name] = o
            if o.kind == "host":
                self._sorted = None
            else:
                self._seen = None
        elif o.kind == "farm":
            if _migrating(o) and not o.deleted:
                self._migrating.add(o.name)
            else:
                self._migrating.discard(o.name)
