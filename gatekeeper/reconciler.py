"""The gatekeeper's side of the manager: report this host, fetch what it should run, converge.
The calls go over the `ManagerLink` (mutual TLS with the certificate the host got when it joined);
the host side of migrations is `gatekeeper.migrations`.

What it created for the manager (VNET ids) is kept in a small file next to the gatekeeper's
state, so a restarted gatekeeper still removes them when the manager stops wanting them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatekeeper.converge import Here, converge
from gatekeeper.manager_link import ManagerLink
from gatekeeper.migrations import Migrations
from gatekeeper.vms import VmService
from gatekeeper.vnet.service import VnetService
from gatekeeper.volumes.converge import VolumeConverger, disk_specs
from gatekeeper.volumes.mirror_hold import mirror_disk
from gatekeeper.volumes.move import DiskMover
from softudc.atomicfile import move_aside, write_atomic
from softudc.model.hoststate import (
    CONTRACT_VERSION,
    MAX_NAME,
    MAX_TEXT,
    MAX_VMS,
    Arrival,
    ContractError,
    DesiredState,
    HostReport,
    MigrationJob,
    is_managed,
    parse,
)

log = logging.getLogger("gatekeeper.manager")
GRACEFUL_STOP_S = 10.0  # a VM asked to power off (ACPI) is destroyed after this (R27b)
STRAY_NOTED_S, STRAYS_KEPT = 60.0, 20


class Reconciler:
    load: Callable[[], dict[str, Any]] | None = None  # the VMs' use (gatekeeper/load.py), set by the agent
    pool: Callable[[], dict[str, int]] | None = None  # the storage service's capacity and free bytes, if it runs
    volumes: VolumeConverger | None = None  # the storage service, made what the manager wants (contract 3)
    disk_mover: DiskMover | None = None  # online moves of this host's VMs' disks (made at the first one)

    def __init__(self, link: ManagerLink, host: str, vnets: VnetService, vms: VmService | None, vcpus: int,
                 memory_mib: int, state_file: Path | None = None, migration_uri: str | None = None,
                 pool: Callable[[], dict[str, int]] | None = None) -> None:
        self.link = link
        self.pool = pool
        self.host = host
        self.vnets, self.vms = vnets, vms
        self.capacity: dict[str, Any] = {"vcpus": vcpus, "memory_mib": memory_mib}
        if migration_uri:
            self.capacity["migration_uri"] = migration_uri
        # Where this host's VNET traffic comes from: the manager lists it among the members of
        # every VNET this host has an instance on, so peers can refuse anyone else (audit R18).
        self.capacity["underlay"] = vnets.config.underlay_address
        self.state_file = state_file
        self.managed_vnets: set[int] = self._load_managed()
        self.errors: list[str] = []
        self.notes: list[str] = []  # what is kept on purpose, worth knowing
        self.migrations = Migrations(vms)
        self._told: set[str] = set()  # VMs the manager listed here (stopped gracefully when it stops)
        self._stopping: dict[str, float] = {}  # VM -> when a graceful stop gives way to destroy
        self._strays: dict[str, float] = {}  # VM never told to run here -> when it was destroyed (noted)
        self.desired: dict[str, Any] = {}  # the latest desired state, as the manager sent it (validated)
        self.state = DesiredState()  # the same, as the contract's model
        self._put = threading.Lock()  # one status report at a time (the sync round's or a heartbeat)
        self._last_put = time.monotonic()
        self._last_report: dict[str, Any] | None = None  # what the last report said (a heartbeat repeats it)
        self._converging = False  # a sync round is carrying out actions (a VM start may take seconds)

    def _load_managed(self) -> set[int]:
        if self.state_file is None or not self.state_file.exists():
            return set()
        try:
            return {int(v) for v in json.loads(self.state_file.read_bytes()).get("managed_vnets", [])}
        except OSError as e:
            log.warning("%s: %s; VNETs made for the manager before a restart will not be removed", self.state_file, e)
        except (ValueError, TypeError, AttributeError) as e:  # empty, truncated or garbage: keep it for a human
            aside = move_aside(self.state_file)
            log.warning("%s is corrupt (%s); moved it to %s: VNETs made for the manager before a restart will not "
                        "be removed", self.state_file, e, aside)
        return set()

    def _save_managed(self) -> None:
        if self.state_file is not None:
            write_atomic(self.state_file, json.dumps({"managed_vnets": sorted(self.managed_vnets)}).encode())

    def busy(self) -> bool:
        """A migration is being handed over (sync more often: each side waits on the other)."""
        return any(v.incoming or v.outgoing or v.migrate_to for v in self.state.vms)

    def report(self, vms_here: list[dict[str, Any]]) -> dict[str, Any]:
        """This host as the contract's HostReport, validated here so that the manager's check passes
        by construction: what would break the contract's bounds is cut or left out, not sent to be
        refused (a refused report would leave the host unheard)."""
        managed = [v for v in vms_here if is_managed(v["name"]) and len(v["name"]) <= MAX_NAME][:MAX_VMS]
        moves = self.migrations
        # Never "ready" while a forwarding thread is down (audit R2); `dataplane` says which one.
        dataplane = self.vnets.forwarder.health()
        fields = {**{k: v for k, v in self.capacity.items() if v is not None}, "contract": CONTRACT_VERSION,
                  "state": "ready" if dataplane["healthy"] else "degraded", "dataplane": dataplane,
                  "running": [v["name"] for v in managed if v["state"] == "running"],
                  "errors": [_cut(e) for e in self.errors[-5:]], "notes": [_cut(n) for n in self.notes[-5:]],
                  "sizes": {v["name"]: [_positive(v.get("vcpus")), _positive(v.get("memory_mib"))] for v in managed},
                  "migrations": {n: _entry(MigrationJob, j) for n, j in moves.snapshot().items()},
                  "arrivals": {n: _entry(Arrival, a) for n, a in moves.arrivals.items()},
                  "prepared": self._prepared(),
                  "vnets": sorted(self.vnets.forwarder.vnets),  # carried here: a member of each (audit R18)
                  "departed": {n: {k: v for k, v in (("attempt", d["attempt"]), ("to", d["to"]),
                                                     ("ago_s", round(max(time.monotonic() - d["ended"], 0.0), 1)))
                                   if v is not None}
                               for n, d in moves.departed.items()}}
        if self.pool is not None:
            try:
                fields["pool"] = self.pool()
            except Exception as e:  # the pool's disk unreadable: the rest of the report still goes
                log.warning("storage pool: %s; reported without it", e)
        if self.volumes is not None:
            try:
                fields["volumes"] = self.volumes.have()
            except Exception as e:  # the pool's disk unreadable: the rest of the report still goes
                log.warning("storage pool's volumes: %s; reported without them", e)
        if self.volumes is not None and (mirrors := self.volumes.service.mirrors.report()):
            fields["mirrors"] = mirrors  # mirrored volumes opened here: each replica's health
        if self.disk_mover is not None and (disk_moves := self.disk_mover.report()):
            fields["disk_moves"] = disk_moves
        if self.load is not None:
            try:
                fields["load"] = self.load()
            except Exception as e:  # libvirt unreachable now: the rest of the report still goes
                log.warning("load: %s; reported without it", e)
        try:
            return parse(HostReport, fields).as_json()
        except ContractError as e:  # a bug here: say so, and still report the capacity
            log.error("this host's report breaks the contract, sent without its details: %s", e)
            return {**{k: v for k, v in self.capacity.items() if v is not None}, "contract": CONTRACT_VERSION,
                    "errors": [_cut(f"report: this gatekeeper built a report the contract refuses ({e}); "
                                    "a gatekeeper bug: report it with the gatekeeper's log")]}

    def _prepared(self) -> list[str]:
        """Incoming VMs whose VNETs exist here: the source may start migrating them."""
        have = {v["vnet"] for v in self.vnets.list_vnets()}
        return sorted(vm.name for vm in self.state.vms if vm.incoming and all(n.vnet in have for n in vm.nics))

    def sync(self, wait: float = 0.0) -> list[str]:
        """One round: report, fetch what to run (waiting up to `wait` seconds for it to change: the
        manager answers at once when it does), converge. Returns what was done (for the log)."""
        vms_here = self.vms.hv.domains() if self.vms else []
        self.migrations.note_arrivals(self.desired, vms_here)
        with self._put:
            self._put_status(vms_here)
        etag = self.desired.get("etag", "")
        fetched = self.link.call("GET", f"/v1/hosts/{self.host}/desired?since={etag}&wait={wait:g}", wait=wait)
        try:
            self.state = parse(DesiredState, fetched)
        except ContractError as e:
            return self._refused(fetched, e)
        desired = self.desired = fetched
        if desired.get("etag") == etag and wait > 0:
            vms_here = self.vms.hv.domains() if self.vms else []  # what changed here while it waited
        wanted = {v["name"] for v in desired.get("vms", [])}
        attempts = self.migrations.forget(wanted)
        if self.vms is not None:
            self.migrations.follow_recovered(desired, vms_here, attempts)
        departed = self.migrations.departures(wanted)
        on_host = {v["name"] for v in vms_here}
        self._told = (self._told | wanted) & (on_host | wanted)
        self._stopping = {n: t for n, t in self._stopping.items() if n in on_host and n not in wanted}
        vnets_here = self.vnets.list_vnets()
        here = Here([v["vnet"] for v in vnets_here], vms_here, set(self.managed_vnets), attempts, departed,
                    {v["vnet"]: v.get("ports", []) for v in vnets_here},
                    {v["vnet"]: v for v in vnets_here if v["vnet"] in self.managed_vnets},
                    self.vnets.config.underlay_address, told=set(self._told))
        self.errors, self.notes = [], []
        self._converging = True
        try:
            done = self._hold_volumes() + self._converge(desired, here) + self._move_disks(vms_here)
        finally:
            self._converging = False
        self._note_strays()
        return done

    def _hold_volumes(self) -> list[str]:
        """The storage service holds and exports the volumes the manager wants here (before the
        VMs: a VM here may use them)."""
        if self.volumes is None:
            return []
        done, errors = self.volumes.converge(self.state.volumes)
        mirrored, mirror_errors = self.volumes.service.mirrors.converge(self.state.vms)  # mirror_hold.py
        self.errors.extend(errors + mirror_errors)
        return done + mirrored

    def _move_disks(self, vms_here: list[dict[str, Any]]) -> list[str]:
        """The disk moves the manager asks of this host's running VMs (gatekeeper/volumes/move.py)."""
        if self.vms is None or (self.disk_mover is None and not any(d.move for v in self.state.vms for d in v.disks)):
            return []
        if self.disk_mover is None:
            self.disk_mover = DiskMover(self.vms.hv.conn)
        return self.disk_mover.step(self.state.vms, {v["name"] for v in vms_here if v["state"] == "running"})

    def _put_status(self, vms_here: list[dict[str, Any]]) -> None:
        self._send(self.report(vms_here))

    def _send(self, report: dict[str, Any]) -> None:
        self.link.call("PUT", f"/v1/hosts/{self.host}/status", report)
        self._last_put, self._last_report = time.monotonic(), report

    def heartbeat(self, period: float) -> bool:
        """While a sync round carries out long actions (VM starts under TCG, several in a row), tell
        the manager this host is alive once `period` seconds have passed since the last report: it
        judges a host down by its silence and would fence a busy, healthy one. The heartbeat repeats
        the last report as it was: libvirt holds every listing while it starts a domain (seconds
        under load), and a report of what the round has half done would be news the round's own
        next report gives whole. Called from another thread; does nothing (False) between rounds,
        or when a report is on its way."""
        if not self._converging or self._last_report is None or time.monotonic() - self._last_put < period:
            return False
        if not self._put.acquire(blocking=False):
            return False
        try:
            self._send(self._last_report)
        finally:
            self._put.release()
        return True

    def _converge(self, desired: dict[str, Any], here: Here) -> list[str]:
        """Carry out converge's actions; what failed or was held goes to the errors and notes."""
        done = []
        for action in converge(self.state, here):
            if action.op == "vm.hold":
                left = self.migrations.departed.get(action.args["name"], {})
                self.errors.append(f"vm.start {action.args['name']}: not restarted: it left this host by migration "
                                   f"to {left.get('to')} (attempt {action.args['attempt']}); the manager restarts it "
                                   "here once that host has reported holding no copy")
                continue
            if action.op == "vm.wait":
                self.notes.append(f"vm.start {action.args['name']}: waiting for volume(s) "
                                  f"{', '.join(action.args['volumes'])}: not placed yet, or their storage host "
                                  "has not reported the export")
                continue
            if action.op == "vnet.keep":
                self.notes.append(f"VNET {action.args['vnet']} is no longer needed here but kept: "
                                  f"{', '.join(action.args['ports'])} still plugged into it (unplug to remove it)")
                continue
            try:
                self._apply(action.op, action.args, desired)
                done.append(str(action))
            except Exception as e:
                self.errors.append(f"{action}: {e}")
                log.warning("%s failed: %s", action, e)
        return done

    def _refused(self, fetched: Any, e: ContractError) -> list[str]:
        """A desired state that breaks the contract is not applied: this host keeps running what it
        runs, and its next report says why (the manager's log and `softudc host list` show it)."""
        why = (f"desired state refused, nothing applied: {e}; the manager and this gatekeeper do not speak one "
               f"contract (this gatekeeper: {CONTRACT_VERSION}): upgrade this gatekeeper to the manager's version")
        log.error("%s", why)
        self.errors, self.notes = [_cut(why)], []
        etag = fetched.get("etag") if isinstance(fetched, dict) else None
        if isinstance(etag, str):  # the next long poll waits for a change rather than returning it again
            self.desired = {**self.desired, "etag": etag}
        return []

    def _note_strays(self) -> None:
        """Managed VMs destroyed here because the manager never told this host to run them: said in
        the notes of the reports of the next STRAY_NOTED_S (bounded: the latest STRAYS_KEPT)."""
        now = time.monotonic()
        recent = sorted((t, n) for n, t in self._strays.items() if now - t < STRAY_NOTED_S)[-STRAYS_KEPT:]
        self._strays = {n: t for t, n in recent}
        self.notes.extend(f"{n} ran here though the manager never told this host to run it; destroyed "
                          f"{now - t:.0f} s ago" for t, n in recent)

    def _apply(self, op: str, args: dict[str, Any], desired: dict[str, Any]) -> None:
        if op in ("vnet.create", "vnet.update", "vnet.recreate"):
            vnet = next(v for v in self.state.vnets if v.id == args["vnet"])
            # members: the underlay addresses of the hosts with an instance on it, when the
            # manager knows them all (None: the configured member_hosts, as before).
            make = self.vnets.replace_vnet if op == "vnet.recreate" else self.vnets.create_vnet
            make(args["vnet"], security=vnet.security if vnet.security != "none" else None,
                 keys=vnet.keys.model_dump() if vnet.keys else None, mtu=vnet.mtu, members=vnet.members)
            if op == "vnet.create":
                self.managed_vnets.add(args["vnet"])
                self._save_managed()
        elif op == "vnet.delete":
            self.vnets.delete_vnet(args["vnet"])
            self.managed_vnets.discard(args["vnet"])
            self._save_managed()
        elif self.vms is None:
            raise RuntimeError("this host has no hypervisor configured ([hypervisor] in the gatekeeper's config)")
        elif op == "vm.start":
            if vm_disks := next((v.disks for v in self.state.vms if v.name == args["name"]), []):
                pool = self.volumes.service.pool if self.volumes is not None else None
                mirrors = self.volumes.service.mirrors.mirrors if self.volumes is not None else None
                self.vms.hv.attach[args["name"]] = tuple(mirror_disk(d, mirrors) if d.replicas else
                                                         disk_specs([d], pool)[0] for d in vm_disks)
            self.vms.start(args["name"], args["nics"], args["vcpus"], args["memory_mib"])
            self.migrations.departed.pop(args["name"], None)  # converge starts a departed VM only on the manager's word
        elif op == "vm.stop":
            self._stop(args["name"], bool(args.get("force", True)))
            if args.get("force", True):  # reports say so for a while: the admin hears of a stray copy (R5)
                self._strays[args["name"]] = time.monotonic()
        elif op == "vm.migrate":
            self.migrations.start(args)

    def _stop(self, name: str, force: bool) -> None:
        """Destroy at once (force), or power off gracefully across sync rounds: ACPI first, destroy
        once GRACEFUL_STOP_S have passed; the sync loop never blocks on a slow guest."""
        assert self.vms is not None
        hv = self.vms.hv
        deadline = self._stopping.get(name)
        if force or (deadline is not None and time.monotonic() >= deadline):
            hv.stop(name, force=True)
            self._stopping.pop(name, None)
            return
        if hv.shutdown(name)["stopping"]:  # asked again each round: a guest may miss the first press
            self._stopping.setdefault(name, time.monotonic() + GRACEFUL_STOP_S)
            return
        hv.stop(name, force=True)  # powered off: undefine it
        self._stopping.pop(name, None)


def _cut(text: str) -> str:
    """A message within the contract's bound (long libvirt errors happen)."""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


def _positive(value: Any) -> int | None:
    """A size the contract takes: a positive integer, else unknown (None)."""
    return value if type(value) is int and value > 0 else None


def _entry(model: type[MigrationJob | Arrival], record: dict[str, Any]) -> dict[str, Any]:
    """A record as a report entry: the contract's fields only (a record may carry more for this
    host's own use), none null, messages cut to the bound."""
    return {k: _cut(v) if isinstance(v, str) and k == "error" else v for k, v in record.items()
            if k in model.model_fields and v is not None}
