"""The host side of live migrations, for the reconciler: the outgoing attempts this host runs
(each on its own thread), the record of VMs that arrived here, and the VMs that left by migration
and must not be started here again without the manager's word (audit R12).

An outgoing attempt's `state` is the contract's job vocabulary (softudc.model.hoststate.JobState),
which the manager maps onto its migration table (softudc/manager/migration.py)::

    copying ──► completed | failed | unknown          (an attempt this process started)
    recovered ──► completed | failed | unknown        (one libvirt carried on while this gatekeeper
                                                        restarted: followed, never started again)

A restart in every state of the source resumes (`recover_migrations`, `settle_recovered`):
libvirt still runs the job → `recovered`, then settled by what libvirt's view shows once it ends
(the VM running here: failed; defined here but not running: unknown; gone: completed); no job
and the VM running here → converge starts the attempt again (the manager follows the new job);
no job and the VM not running here → nothing is started (it may run at the destination): the
manager settles the move from the destination's reports.

Their progress and outcome go out with every report; the reconciler holds one `Migrations`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from gatekeeper.converge import Here
from gatekeeper.hypervisor.driver import MigrationOutcomeUnknown
from gatekeeper.vms import VmService
from softudc.model.hoststate import JobState

log = logging.getLogger("gatekeeper.manager")
LEFT: tuple[JobState, ...] = ("completed", "unknown")  # attempts after which the VM may run at the destination
UNDER_WAY: tuple[JobState, ...] = ("starting", "copying", "recovered")  # a job libvirt is (or may be) still running


def recover_migrations(desired: dict[str, Any], here: Here, active: set[str]) -> dict[str, str]:
    """After a gatekeeper restart: outgoing migrations libvirt is still running (`active`: VMs with
    a migration job) that the manager asked for. Returns VM -> attempt, to follow, not restart."""
    out = {}
    for vm in desired.get("vms", []):
        move = vm.get("migrate_to")
        if move and vm["name"] in active and here.attempts.get(vm["name"]) != move["attempt"]:
            out[vm["name"]] = move["attempt"]
    return out


def settle_recovered(job: dict[str, Any], still_here: bool, still_active: bool,
                     present: bool | None = None) -> dict[str, Any] | None:
    """A recovered migration's outcome once libvirt's job ends (None while it runs): running here
    without a job means it was interrupted; gone from here (no domain at all: the source is
    undefined on success) means it completed; defined here but not running is unknown (R12)."""
    if still_active:
        return None
    if still_here:
        return {"state": "failed", "error": "the migration stopped while this host's gatekeeper restarted; "
                                            "the VM keeps running here (ask for the migration again)"}
    if present:
        return {"state": "unknown", "error": "the migration ended while this host's gatekeeper restarted and "
                                             "the VM no longer runs here; it may run at the destination"}
    return {"state": "completed"}


class Migrations:
    def __init__(self, vms: VmService | None) -> None:
        self.vms = vms
        self.outgoing: dict[str, dict[str, Any]] = {}  # VM -> the latest outgoing attempt
        self.arrivals: dict[str, dict[str, Any]] = {}  # VM -> libvirt's record of its incoming migration
        # VMs that left by migration, not to be started here again without the manager's word (R12):
        # VM -> {attempt, to, ended}; kept while the manager lists the VM here (bounded by that list).
        self.departed: dict[str, dict[str, Any]] = {}
        self._local_seen: set[tuple[str, float]] = set()  # local-API migrations already looked at
        self._lock = threading.Lock()  # `outgoing` is updated by the migration threads

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The outgoing attempts as the report carries them: copies, with the progress of the
        ones still copying."""
        with self._lock:
            migrations = {n: dict(j) for n, j in self.outgoing.items()}
        for name, job in migrations.items():
            if job["state"] in UNDER_WAY and self.vms is not None:
                progress = self.vms.hv.job(name)
                job.update({k: progress[k] for k in ("data_total", "data_processed") if progress.get(k)})
        return migrations

    def forget(self, wanted: set[str]) -> dict[str, str]:
        """Drop the finished attempts of VMs the manager no longer lists here (it has taken note);
        the attempts still known: VM -> attempt."""
        with self._lock:
            for name in [n for n, j in self.outgoing.items() if n not in wanted and j["state"] not in UNDER_WAY]:
                del self.outgoing[name]
            return {n: j["attempt"] for n, j in self.outgoing.items()}

    def departures(self, wanted: set[str]) -> dict[str, str]:
        """VMs that left this host by migration (through the manager, or the local API) and may run
        elsewhere: VM -> attempt. Forgotten once the manager no longer lists the VM here (it took
        note of the move), never after a while: a timer cannot tell that no copy runs elsewhere."""
        with self._lock:
            for name, job in self.outgoing.items():
                if job["state"] in LEFT and name not in self.departed:
                    self.departed[name] = {"attempt": job["attempt"], "to": job["to"],
                                           "ended": job.get("ended", time.monotonic())}
        if self.vms is not None:
            local = {(n, float(j.get("started", 0))): j for n, j in list(self.vms.hv.migrations.items())}
            for (name, started), job in local.items():
                if (name, started) in self._local_seen or job.get("state") not in LEFT:
                    continue
                self._local_seen.add((name, started))
                if name not in self.outgoing and name not in self.departed:  # behind the manager's back
                    self.departed[name] = {"attempt": f"local-{started:.0f}", "to": job.get("dest"),
                                           "ended": time.monotonic()}
            self._local_seen &= set(local)
        self.departed = {n: d for n, d in self.departed.items() if n in wanted}
        return {n: str(d["attempt"]) for n, d in self.departed.items()}

    def follow_recovered(self, desired: dict[str, Any], vms_here: list[dict[str, Any]],
                         attempts: dict[str, str]) -> None:
        """Migrations libvirt carried on while this gatekeeper restarted: followed, not restarted."""
        assert self.vms is not None
        wants = [v for v in desired.get("vms", []) if v.get("migrate_to")]
        recovered = [n for n, j in self.outgoing.items() if j["state"] == "recovered"]
        if not wants and not recovered:
            return
        active = self.vms.hv.migrating()
        here_names = {v["name"] for v in vms_here}
        running_here = {v["name"] for v in vms_here if v["state"] == "running"}
        with self._lock:
            for name, attempt in recover_migrations(desired, Here([], vms_here, attempts=attempts), active).items():
                to = next(v["migrate_to"]["host"] for v in wants if v["name"] == name)
                self.outgoing[name] = {"attempt": attempt, "to": to, "state": "recovered", "recovered": True,
                                       "started": time.time()}
                attempts[name] = attempt
                log.info("following the migration of %s to %s that was running before this restart", name, to)
            for name in recovered:
                outcome = settle_recovered(self.outgoing[name], name in running_here, name in active,
                                           present=name in here_names)
                if outcome:
                    self.outgoing[name].update(outcome, ended=time.monotonic())

    def note_arrivals(self, desired: dict[str, Any], vms_here: list[dict[str, Any]]) -> None:
        """For VMs arriving here by migration: libvirt's record (downtime), reported once running."""
        running = {v["name"] for v in vms_here if v["state"] == "running"}
        incoming = {v["name"] for v in desired.get("vms", []) if v.get("incoming")}
        self.arrivals = {n: a for n, a in self.arrivals.items() if n in incoming}
        for name in incoming & running:
            if name not in self.arrivals and self.vms is not None:
                try:
                    self.arrivals[name] = self.vms.hv.completed_job(name)
                except Exception as e:  # the record is a nicety; the VM runs either way
                    self.arrivals[name] = {"error": str(e)}

    def start(self, args: dict[str, Any]) -> None:
        """Start the outgoing migration `args` (converge's vm.migrate) on its own thread."""
        name = args["name"]
        job = {"attempt": args["attempt"], "to": args["host"], "state": "copying", "started": time.time()}
        with self._lock:
            self.outgoing[name] = job
        assert self.vms is not None
        vms = self.vms

        def run() -> None:
            try:
                result = vms.migrate(name, args["uri"], int(args.get("bandwidth_mib", 0)),
                                     int(args.get("downtime_ms", 0)))
                update = {"state": "completed", "wall_ms": result.get("wall_ms")}
            except MigrationOutcomeUnknown as e:  # it may run at the destination: never restart it blindly
                update = {"state": "unknown", "error": str(e)}
                log.warning("migration of %s to %s: %s", name, args["host"], e)
            except Exception as e:
                update = {"state": "failed", "error": str(e)}
                log.warning("migration of %s to %s failed: %s", name, args["host"], e)
            with self._lock:
                job.update(update, ended=time.monotonic())

        threading.Thread(target=run, name=f"migrate-{name}", daemon=True).start()
