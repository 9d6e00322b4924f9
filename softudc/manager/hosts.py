"""Hosts as the manager's API sees them: joining (a one-time token and a CSR), authenticating a
gatekeeper's certificate, its reports, the states an admin sets, removal, and each host's state
as placement goes by it. A mixin of the Manager. Writes here only store: the controller loop
(softudc/manager/loop.py) reconciles what they change.

A report that says what the stored one says (all but `reported`), while that one is younger than
REFRESH_S and no migration is under way, is not written: it is a heartbeat in this manager's book
(heartbeats.py), flushed about once a second; `reports()` merges every manager's flushed heartbeats
(so every manager sees the same, from the store). A report is compared with StoredHosts
(reports.py): every host object as the store holds it, kept current from the store's changes,
which `reports()` is built from too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from softudc.manager.auth import Principal
from softudc.manager.controller import HOST_DOWN_AFTER_S, inventory
from softudc.manager.errors import ApiError
from softudc.manager.farms import Usage
from softudc.manager.heartbeats import HeartbeatBook, default_manager_id
from softudc.manager.load import LoadView, split_load
from softudc.manager.reports import REFRESH_S, StoredHosts, report_problems, same_report, visible_to
from softudc.manager.store import Conflict, Obj, Store
from softudc.manager.storetokens import StoreJoinTokens
from softudc.pki import CertificateAuthority, PkiError, fingerprint, server_addresses

HOST_STATES = ("ready", "draining", "maintenance")  # what an admin sets; `down` the manager decides;
# `standby`: powered off through its power driver (softudc/manager/apipower.py), not placed on, not down
REPORTS_KEPT_S = 0.5  # reports() answers again from what it built while the store did not move
_MADE = threading.Lock()  # makes each Manager's book and cache once (Hosts has no __init__ of its own)


class Hosts:
    """Hosts: what the Manager provides them (its store, CA and event log)."""

    store: Store
    ca: CertificateAuthority
    manager_id: str  # this manager among those of its group (the Manager sets it; else hostname-pid)

    if TYPE_CHECKING:  # provided by the Manager (or another of its mixins)
        def _event(self, kind: str, name: str, type_: str, message: str) -> None:
            ...

        def _usage(self, farms: list[Obj]) -> Usage:
            ...

        def start(self) -> None:
            ...

        def address_noted(self, host: str, address: str) -> bool:
            ...

    @property
    def heartbeats(self) -> HeartbeatBook:
        """This manager's heartbeat book (made at first use)."""
        with _MADE:
            book: HeartbeatBook | None = self.__dict__.get("_heartbeat_book")
            if book is None:
                book = self.__dict__["_heartbeat_book"] = HeartbeatBook(
                    self.store, self.__dict__.get("manager_id") or default_manager_id())
        return book

    @property
    def load_view(self) -> LoadView:
        """This manager's view of its hosts' load, kept apart from their reports (softudc/manager/load.py)."""
        with _MADE:
            view: LoadView | None = self.__dict__.get("_load_view")
            if view is None:
                view = self.__dict__["_load_view"] = LoadView(
                    self.store, self.__dict__.get("manager_id") or default_manager_id())
        return view

    @property
    def stored_hosts(self) -> StoredHosts:
        """The hosts as the store holds them now (made at first use)."""
        with _MADE:
            hosts: StoredHosts | None = self.__dict__.get("_stored_hosts")
            if hosts is None:
                hosts = self.__dict__["_stored_hosts"] = StoredHosts(self.store)
        return hosts

    def close_hosts(self) -> None:
        """At a clean stop: the heartbeats not yet written are written (the Manager's close calls it)."""
        book: HeartbeatBook | None = self.__dict__.get("_heartbeat_book")
        if book is not None:
            book.close()
        hosts: StoredHosts | None = self.__dict__.get("_stored_hosts")
        if hosts is not None:
            hosts.close()
        view: LoadView | None = self.__dict__.get("_load_view")
        if view is not None:
            view.close()

    # --- the gatekeepers' requests from memory: thousands a second, on the server's event loop -----

    def host_known(self, name: str, peer_cn: str | None, peer_fingerprint: str | None) -> bool:
        """Whether the cache (StoredHosts.peek) shows `name` joined and bound to this certificate:
        then the request is authenticated without a look at the store. False sends the caller to
        `authenticate_host`, which looks and says what is wrong. A host removed or joined again is
        refused here within about PEEK_EVERY_S (at once by the manager that removed it)."""
        return self._known(name, peer_cn, peer_fingerprint) is not None

    def _known(self, name: str, peer_cn: str | None, peer_fingerprint: str | None) -> Obj | None:
        """The cached host object when it shows `name` bound to this certificate (host_known)."""
        if peer_cn is None or peer_cn != name or peer_fingerprint is None:
            return None
        obj = self.stored_hosts.peek(name)
        return obj if obj is not None and obj.spec.get("certificate") == peer_fingerprint else None

    def report_heartbeat(self, name: str, peer_cn: str | None, peer_fingerprint: str | None, body: Any,
                         address: str | None) -> dict[str, Any] | None:
        """`host_status`'s answer for a report that is only a heartbeat, decided from memory (an
        authenticated host, the same report as the cached stored one, which is fresh, no migration
        under way, the address it came from already noted); None: the caller takes the full path.
        The report needs no check of its own: it equals one that was checked when it was stored."""
        before = self._known(name, peer_cn, peer_fingerprint) if isinstance(body, dict) else None
        if before is None or (address is not None and not self.address_noted(name, address)):
            return None
        now = time.time()
        body, load = split_load(body)  # changes every report: never compared (softudc/manager/load.py)
        if now - float(before.status.get("reported", 0)) >= REFRESH_S \
                or not same_report(before.status, body) or self.stored_hosts.busy():
            return None
        if load is not None and not self.load_view.note(name, load):
            return None  # the full path refuses it, naming what is wrong
        self.heartbeats.seen(name, now)
        return {"host": name, "stored": True}

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
        self.start()
        return {"host": name, "state": state}

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
        addresses = [str(a) for a in body.get("addresses") or []]
        try:
            server_addresses(addresses)
        except PkiError as e:
            raise ApiError(400, str(e)) from None
        try:
            host, cert = self.ca.join(str(body.get("token", "")), str(body.get("csr", "")).encode(),
                                      redeem=self._held_addresses_refused(addresses), addresses=addresses)
        except PkiError as e:
            raise ApiError(403, str(e)) from None
        except ValueError as e:
            raise ApiError(400, f"csr: not a PEM certificate request ({e}); send the CSR the gatekeeper "
                                "made, in PEM") from None
        old = self.store.get("host", host)
        # `state` (an admin's draining/maintenance) is kept across a re-join; the certificate is not.
        self.store.put("host", host, {**(old.spec if old else {}), "joined": time.time(),
                                      "certificate": fingerprint(cert), "addresses": addresses})
        self.stored_hosts.refresh()  # the old certificate is refused from now on, from memory too (host_known)
        if old is not None:
            self._event("host", host, "Rejoined", "a new certificate; the ones it had before are refused from now on")
        return {"host": host, "certificate": cert.decode(), "ca": self.ca.cert_pem.decode()}

    def _held_addresses_refused(self, addresses: list[str]) -> Callable[[str], str]:
        """The token's redeemer, refusing addresses another host's certificate serves on (a host
        must not get a certificate others would trust as that host's NBD server). Checked when
        the token is spent: the name is known only then; a refusal says which host holds what."""
        def redeem(token: str) -> str:
            host = self._redeem_join_token(token)
            for o in self.store.objects("host"):
                held = set(o.spec.get("addresses") or []) & set(addresses)
                if o.name != host and held:
                    raise PkiError(f"addresses: {', '.join(sorted(held))} belong to host {o.name}'s certificate; "
                                   f"send {host}'s own underlay addresses with a new join token")
            return host
        return redeem

    def _redeem_join_token(self, token: str) -> str:
        """Spend a join token: one in the store (`softudc host join-token`: any manager of a group
        honours it, once), else one in this manager's pki/tokens.json (made before tokens moved
        to the store, or by a lab from the files)."""
        try:
            return StoreJoinTokens(self.store).redeem(token)
        except PkiError as e:
            if "unknown" not in str(e):
                raise  # expired: not worth a second look
        return self.ca.redeem_join_token(token)

    def authenticate_host(self, name: str, peer_cn: str | None, peer_fingerprint: str | None) -> None:
        """Gatekeeper routes: the client certificate must name `name` and be the one `name` got
        at its latest join. A host that joined before certificates were recorded is bound to the
        first certificate it shows (its gatekeeper reports every few seconds, so that is almost
        surely its own; if not, the real host is refused, says so, and joins again)."""
        if peer_cn is None or peer_fingerprint is None:
            raise ApiError(403, "gatekeeper routes need a client certificate from this manager's CA (join first)")
        if peer_cn != name:
            raise ApiError(403, f"this certificate belongs to {peer_cn!r}, not {name!r}")
        obj = self.store.get("host", name)  # one object: cheap on both stores (etcd's from its watched copy)
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
        self.stored_hosts.refresh()  # refused from now on, from memory too (host_known)
        self.heartbeats.forget(name)
        self.load_view.forget(name)
        self._event("host", name, "Removed", f"by {who.name}: its certificate is refused from now on" +
                    (f"; instances still assigned to it: {', '.join(placed)}" if placed else ""))
        self.start()
        return {"host": name, "removed": True, "instances": placed}

    def host_status(self, peer_cn: str | None, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if peer_cn is None:
            raise ApiError(403, "gatekeeper routes need a client certificate from this manager's CA (join first)")
        if peer_cn != name:
            raise ApiError(403, f"this certificate belongs to {peer_cn!r}, not {name!r}")
        before = self.stored_hosts.get(name)
        if before is None:
            raise ApiError(404, f"host {name!r} never joined")
        problems = report_problems(body)
        if problems:  # one broken gatekeeper must not break planning for every farm
            raise ApiError(400, f"report from {name} refused, nothing stored: " + "; ".join(problems) +
                           "; fix the gatekeeper, or bring it and this manager to versions that speak one contract "
                           "(softudc/model/hoststate.py; managers are upgraded first)")
        now = time.time()
        body, load = split_load(body)  # changes every report: kept apart, never compared (load.py)
        if load is not None:
            self.load_view.note(name, load, checked=True)
        if now - float(before.status.get("reported", 0)) < REFRESH_S and same_report(before.status, body) \
                and not self.stored_hosts.busy():  # a migration's steps count reports: each one is stored
            self.heartbeats.seen(name, now)  # nothing new: a heartbeat, written with others about once a second
            return {"host": name, "stored": True}
        # Stored, and that is all: the controller loop judges whether it is news (softudc/manager/loop.py).
        self.store.set_status("host", name, {**body, "reported": now})
        self.start()
        return {"host": name, "stored": True}

    def reports(self) -> dict[str, dict[str, Any]]:
        """Each host's last report with the state placement goes by: the one an admin set
        (draining, maintenance) or ready; `down` when it has not reported for HOST_DOWN_AFTER_S,
        unless it is in `standby` or was powered off by its drain (its silence is expected).
        `reported` is the newest of the stored report's and the heartbeats' (every manager's
        flushed books): the host said that, again, then. Built from StoredHosts (no read of the
        store unless it changed) and kept for REPORTS_KEPT_S while the store has not moved (every
        long poll that misses its cache asks); the reports are shared: read them, never change them."""
        now = time.time()
        objs, seen, revision = self.stored_hosts.snapshot(now)  # from the cache, kept current
        kept: tuple[int, float, dict[str, dict[str, Any]]] | None = self.__dict__.get("_reports_kept")
        if kept is not None and kept[0] == revision and 0 <= now - kept[1] < REPORTS_KEPT_S:
            return dict(kept[2])
        out = {}
        for o in objs:
            state = o.spec.get("state", "ready")
            status = o.status
            at = max(float(status.get("reported", 0)), seen.get(o.name, 0.0))
            quiet = state == "standby" or (o.spec.get("drain") or {}).get("power") == "off"  # off on purpose
            if now - at > HOST_DOWN_AFTER_S and not quiet:  # (apipower.py; drain --power-off: drain.py)
                state = "down"
            out[o.name] = {**status, **({"reported": at} if "reported" in status else {}), "state": state}
        self.__dict__["_reports_kept"] = (revision, now, out)
        return dict(out)
