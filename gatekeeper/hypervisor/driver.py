"""VMs of this host through libvirt-python. Every public method blocks (libvirt calls): the API
runs them in a thread executor, never on the event loop.

libvirt's lifecycle events tell the VNET side which MACs are here: a domain that starts or
resumes here (also at the end of an incoming migration) has its NICs registered as local and a
gratuitous VARP ANNOUNCE sent at once, so every host re-learns a moved VM without waiting for a
cache to expire (the Xen original never sent it: reference/xen-vnet.md §2.10). A domain that
stops or leaves has its NICs unregistered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt

from gatekeeper.hypervisor.domain import DiskSpec, DomainNic, VmSpec, domain_nics, domain_xml
from softudc import libvirturi

log = logging.getLogger("gatekeeper.hypervisor")

STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
          libvirt.VIR_DOMAIN_SHUTOFF: "shutoff", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
          libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_BLOCKED: "running",
          libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended", libvirt.VIR_DOMAIN_NOSTATE: "unknown"}
MIGRATE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_AUTO_CONVERGE)
MIGRATION_TIMEOUT_S = 300.0
# Paused because a migration is bringing it in (or, on a source, handing it over): not a VM of this
# host yet. Its NICs are registered by the RESUMED/STARTED event once it runs here (audit R27a).
MIGRATION_PAUSES = (libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)

_events_started = threading.Lock()
_events_running = False


class HypervisorError(RuntimeError):
    """A VM operation that failed; the message says what happened and what to do."""


class MigrationOutcomeUnknown(HypervisorError):
    """A migration ended in an error, but the VM no longer runs here: it may run on the destination,
    or nowhere. Nobody may start it again until the destination has said it holds no copy (R12)."""


def _start_event_loop() -> None:
    """libvirt delivers events only to a process that registered its default event loop before
    opening connections, and runs it."""
    global _events_running
    with _events_started:
        if _events_running:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _events_running = True


NicCallback = Callable[[list[DomainNic], str], None]


class Hypervisor:
    def __init__(self, uri: str, on_arrive: NicCallback, on_leave: NicCallback) -> None:
        self.uri = uri
        self.on_arrive = on_arrive
        self.on_leave = on_leave
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._nics: dict[str, list[DomainNic]] = {}  # domain name -> its VNET NICs while here
        self.migrations: dict[str, dict[str, Any]] = {}
        # The disks the next start of a domain gets (its volumes: the reconciler sets them before
        # `vm.start`, whose API has no disks yet); taken by that start.
        self.attach: dict[str, tuple[DiskSpec, ...]] = {}

    # --- connection and events ----------------------------------------------------------------

    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                _start_event_loop()
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as e:
                    raise HypervisorError(f"cannot reach libvirtd at {self.uri}: {e.get_error_message()} "
                                          "(is the host's libvirtd running? `softudc lab status`)") from None
                self._conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, None)
            return self._conn

    def _event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        name = dom.name()
        try:
            if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
                if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                    self._arrive(dom, "migrated" if detail in (libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED,
                                                               libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                                 else "started")
            elif event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                self._leave(name, "migrated away" if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
                            else "stopped")
        except libvirt.libvirtError as e:
            log.warning("event for %s: %s", name, e.get_error_message())

    def _arrive(self, dom: Any, why: str) -> None:
        nics = domain_nics(dom.XMLDesc(0))
        self._nics[dom.name()] = nics
        log.info("%s %s here with %d VNET NIC(s)", dom.name(), why, len(nics))
        self.on_arrive(nics, dom.name())

    def _leave(self, name: str, why: str) -> None:
        nics = self._nics.pop(name, [])
        log.info("%s %s", name, why)
        if nics:
            self.on_leave(nics, name)

    def adopt(self) -> list[str]:
        """After a gatekeeper restart: the running domains stay as they are; register their NICs.
        A domain paused for a migration is skipped: announcing its MACs from here would pull its
        traffic to a copy that is not running yet (R27a); its RESUMED event registers it if it lands."""
        names = []
        for dom in self.conn().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            state, reason = dom.state()[:2]
            if state == libvirt.VIR_DOMAIN_PAUSED and reason in MIGRATION_PAUSES:
                log.info("%s is paused for a migration; not adopted until it runs here", dom.name())
                continue
            if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED):
                self._arrive(dom, "adopted")
                names.append(dom.name())
        return names

    # --- lifecycle ----------------------------------------------------------------------------

    def _dom(self, name: str) -> Any:
        try:
            return self.conn().lookupByName(name)
        except libvirt.libvirtError:
            raise HypervisorError(f"no VM {name!r} on this host (see `vm.list`)") from None

    def start(self, spec: VmSpec) -> dict[str, Any]:
        if disks := self.attach.pop(spec.name, ()):
            spec = dataclasses.replace(spec, disks=spec.disks + disks)
        conn = self.conn()
        try:
            existing = conn.lookupByName(spec.name)
        except libvirt.libvirtError:
            existing = None
        if existing is not None and existing.isActive():
            raise HypervisorError(f"VM {spec.name} is already running on this host")
        try:
            if existing is not None:  # left defined and shut off (the guest powered itself off, a crash):
                existing.undefine()  # defining again under a new UUID would fail on every start
            dom = conn.defineXML(domain_xml(spec))
            dom.create()
        except libvirt.libvirtError as e:
            raise HypervisorError(f"cannot start {spec.name}: {e.get_error_message()}") from None
        return self.describe(dom)

    def stop(self, name: str, force: bool = False, undefine: bool = True) -> dict[str, Any]:
        dom = self._dom(name)
        try:
            if dom.isActive():
                if force:
                    dom.destroy()
                else:
                    dom.shutdown()
                    deadline = time.monotonic() + 10
                    while dom.isActive() and time.monotonic() < deadline:
                        time.sleep(0.1)
                    if dom.isActive():
                        dom.destroy()  # the test guest has no ACPI daemon; do not wait forever
            if undefine:
                dom.undefine()
        except libvirt.libvirtError as e:
            raise HypervisorError(f"cannot stop {name}: {e.get_error_message()}") from None
        self._leave(name, "stopped")
        return {"name": name, "stopped": True}

    def shutdown(self, name: str) -> dict[str, Any]:
        """Ask the guest to power off (ACPI) and return at once; whoever asked destroys it if it is
        still running after its grace period (R27b: cold moves and deletes end gracefully)."""
        dom = self._dom(name)
        try:
            active = bool(dom.isActive())
            if active:
                dom.shutdown()
        except libvirt.libvirtError as e:
            raise HypervisorError(f"cannot shut {name} down: {e.get_error_message()}") from None
        return {"name": name, "stopping": active}

    def pause(self, name: str) -> dict[str, Any]:
        self._dom(name).suspend()
        return {"name": name, "state": "paused"}

    def resume(self, name: str) -> dict[str, Any]:
        self._dom(name).resume()
        return {"name": name, "state": "running"}

    def describe(self, dom: Any) -> dict[str, Any]:
        state, max_kib, _, vcpus, _ = dom.info()
        nics = domain_nics(dom.XMLDesc(0))
        return {"name": dom.name(), "state": STATES.get(state, "unknown"), "vcpus": vcpus,
                "memory_mib": max_kib // 1024, "nics": [{"vnet": n.vnet, "mac": n.mac, "tap": n.tap} for n in nics]}

    def migrating(self) -> set[str]:
        """VMs with a live job (a migration started before this process, say) on this host."""
        out = set()
        for dom in self.conn().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.jobInfo()[0] not in (libvirt.VIR_DOMAIN_JOB_NONE, libvirt.VIR_DOMAIN_JOB_COMPLETED):
                    out.add(dom.name())
        return out

    def nics(self, name: str) -> list[DomainNic]:
        return domain_nics(self._dom(name).XMLDesc(0))

    def domains(self) -> list[dict[str, Any]]:
        out = []
        for dom in self.conn().listAllDomains(0):
            try:
                out.append(self.describe(dom))
            except libvirt.libvirtError:
                continue  # undefined while we were listing (a stop or a migration finishing)
        return out

    def stats(self) -> list[dict[str, Any]]:
        """Per-VM counters from getAllDomainStats (getCPUStats needs cgroups, absent here)."""
        flags = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                 | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK
                 | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU)
        out = []
        for dom, s in self.conn().getAllDomainStats(flags, 0):
            nets = [{"name": s.get(f"net.{i}.name"), "rx_bytes": s.get(f"net.{i}.rx.bytes", 0),
                     "tx_bytes": s.get(f"net.{i}.tx.bytes", 0), "rx_packets": s.get(f"net.{i}.rx.pkts", 0),
                     "tx_packets": s.get(f"net.{i}.tx.pkts", 0)} for i in range(s.get("net.count", 0))]
            blocks = [{"name": s.get(f"block.{i}.name"), "rd_bytes": s.get(f"block.{i}.rd.bytes", 0),
                       "wr_bytes": s.get(f"block.{i}.wr.bytes", 0)} for i in range(s.get("block.count", 0))]
            out.append({"name": dom.name(), "uuid": dom.UUIDString(), "id": dom.ID(),  # one start of it (usage)
                        "state": STATES.get(s.get("state.state", 0), "unknown"),
                        "cpu_time_ns": s.get("cpu.time", 0), "vcpus": s.get("vcpu.current", 0),
                        "memory_kib": s.get("balloon.current", 0), "rss_kib": s.get("balloon.rss", 0),
                        "net": nets, "block": blocks})
        return out

    # --- live migration -----------------------------------------------------------------------

    def migrate(self, name: str, dest_uri: str, bandwidth_mib: int = 0, downtime_ms: int = 0,
                timeout_s: float = MIGRATION_TIMEOUT_S) -> dict[str, Any]:
        """Live-migrate peer to peer; blocks until done. QEMU slows a guest that dirties memory
        faster than it can be copied (auto-converge); after `timeout_s` the migration is aborted.
        On a failure with the VM still running here: HypervisorError; with the VM no longer running
        here: MigrationOutcomeUnknown (it may run at the destination: never restart it blindly)."""
        try:
            libvirturi.check(dest_uri)  # the manager built it; still, never dial anything else (R20)
        except libvirturi.MigrationUriError as e:
            raise HypervisorError(f"migration of {name} refused: {e}") from None
        dom = self._dom(name)
        if not dom.isActive():
            raise HypervisorError(f"VM {name} is not running; only running VMs migrate live")
        params: dict[str, Any] = {}
        if bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth_mib)
        job = self.migrations[name] = {"name": name, "dest": dest_uri, "state": "starting", "started": time.time()}
        if downtime_ms:
            with contextlib.suppress(libvirt.libvirtError):
                dom.migrateSetMaxDowntime(int(downtime_ms), 0)
        t0 = time.monotonic()
        watchdog = threading.Timer(timeout_s, self._abort_slow, (dom, job, timeout_s))
        watchdog.daemon = True
        watchdog.start()
        try:
            job["state"] = "copying"
            dom.migrateToURI3(dest_uri, params, MIGRATE_FLAGS)
        except libvirt.libvirtError as e:
            job["error"] = job.get("timed_out") or e.get_error_message() or str(e)
            if self._runs_here(name):
                job["state"] = "failed"
                raise HypervisorError(f"migration of {name} to {dest_uri} failed: {job['error']}; "
                                      f"{name} keeps running on this host") from None
            # An error in the confirm phase, a dropped connection, or the watchdog racing completion:
            # the VM may well run at the destination now (R12).
            job["state"] = "unknown"
            raise MigrationOutcomeUnknown(f"migration of {name} to {dest_uri} ended with an error "
                                          f"({job['error']}) and {name} no longer runs here: it may run at the "
                                          "destination; it is not restarted here") from None
        finally:
            watchdog.cancel()
        job.update(state="completed", wall_ms=round((time.monotonic() - t0) * 1000))
        self._leave(name, "migrated away")
        return dict(job)

    def _abort_slow(self, dom: Any, job: dict[str, Any], timeout_s: float) -> None:
        job["timed_out"] = (f"not done after {timeout_s:.0f} s (the guest dirties memory faster than it "
                            "can be copied, or the destination is slow); aborted")
        with contextlib.suppress(libvirt.libvirtError):
            dom.abortJob()

    def _runs_here(self, name: str) -> bool:
        """Running here, not merely active: a source left paused after an error in the last phase may
        have a running copy at the destination."""
        try:
            return bool(self.conn().lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING)
        except libvirt.libvirtError:
            return False

    def job(self, name: str) -> dict[str, Any]:
        """Progress of a running migration (for a progress display), or its final state."""
        job = dict(self.migrations.get(name) or {"name": name, "state": "none"})
        if job.get("state") == "copying":
            try:
                stats = self._dom(name).jobStats(0)
                job.update(data_total=stats.get("data_total"), data_processed=stats.get("data_processed"),
                           data_remaining=stats.get("data_remaining"), time_elapsed_ms=stats.get("time_elapsed"))
            except (libvirt.libvirtError, HypervisorError):
                pass
        return job

    def cancel(self, name: str) -> dict[str, Any]:
        try:
            self._dom(name).abortJob()
        except libvirt.libvirtError as e:
            raise HypervisorError(f"cannot cancel the migration of {name}: {e.get_error_message()}") from None
        return {"name": name, "cancelled": True}

    def completed_job(self, name: str) -> dict[str, Any]:
        """On the destination after an incoming migration: libvirt's record of it (downtime)."""
        stats = self._dom(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        return {"downtime_ms": stats.get("downtime"), "total_ms": stats.get("time_elapsed"),
                "data_total": stats.get("data_total")}
