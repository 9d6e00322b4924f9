"""The hypervisor driver and the gatekeeper's converge/stop logic around migrations, against a
fake libvirt connection (audit R12, R20, R27): what a failed or ambiguous migration reports, which
domains a restarted gatekeeper adopts, how VMs are stopped, and that a VM that left by migration
is never started again without the manager's word."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from gatekeeper.converge import Here, converge
from gatekeeper.hypervisor.driver import Hypervisor, HypervisorError, MigrationOutcomeUnknown
from gatekeeper.migrations import Migrations, settle_recovered
from gatekeeper.reconciler import GRACEFUL_STOP_S, Reconciler

XML = """<domain><name>{name}</name><devices><interface type='bridge'><source bridge='vnbr5'/>
<mac address='52:54:00:00:00:01'/><target dev='vnet0'/></interface></devices></domain>"""


class FakeDomain:
    def __init__(self, name: str, state: int = libvirt.VIR_DOMAIN_RUNNING, reason: int = 1,
                 migrate_error: bool = False, after_error: int | None = None) -> None:
        self._name, self.st, self.reason = name, state, reason
        self.migrate_error, self.after_error = migrate_error, after_error
        self.calls: list[str] = []

    def name(self) -> str:
        return self._name

    def state(self) -> list[int]:
        return [self.st, self.reason]

    def isActive(self) -> bool:
        return self.st in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)

    def XMLDesc(self, _flags: int) -> str:
        return XML.format(name=self._name)

    def migrateToURI3(self, uri: str, params: dict[str, Any], flags: int) -> None:
        self.calls.append(f"migrate {uri}")
        if self.migrate_error:
            if self.after_error is not None:
                self.st = self.after_error
            raise libvirt.libvirtError("Unable to read from monitor: Connection reset by peer")

    def migrateSetMaxDowntime(self, ms: int, flags: int) -> None:
        pass

    def abortJob(self) -> None:
        self.calls.append("abort")

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.st = libvirt.VIR_DOMAIN_SHUTOFF

    def undefine(self) -> None:
        self.calls.append("undefine")


class FakeConn:
    def __init__(self, *doms: FakeDomain) -> None:
        self.doms = {d.name(): d for d in doms}

    def isAlive(self) -> bool:
        return True

    def listAllDomains(self, flags: int) -> list[FakeDomain]:
        return [d for d in self.doms.values()
                if flags != libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE or d.isActive()]

    def lookupByName(self, name: str) -> FakeDomain:
        if name not in self.doms:
            raise libvirt.libvirtError(f"Domain not found: {name}")
        return self.doms[name]


def hypervisor(*doms: FakeDomain) -> tuple[Hypervisor, list[str]]:
    arrived: list[str] = []
    hv = Hypervisor("test:///fake", lambda nics, name: arrived.append(name), lambda nics, name: None)
    hv._conn = FakeConn(*doms)
    return hv, arrived


# --- R12: a migration that ends in an error ---------------------------------------------------


def test_r12_an_error_that_leaves_the_vm_not_running_here_is_unknown_not_failed() -> None:
    dom = FakeDomain("demo--db-0", migrate_error=True, after_error=libvirt.VIR_DOMAIN_SHUTOFF)
    hv, _ = hypervisor(dom)
    with pytest.raises(MigrationOutcomeUnknown) as e:
        hv.migrate("demo--db-0", "qemu+tcp://10.99.0.12/system")
    assert "may run at the destination" in str(e.value)
    assert hv.migrations["demo--db-0"]["state"] == "unknown"


def test_r12_a_source_left_paused_after_an_error_is_unknown_too() -> None:
    dom = FakeDomain("demo--db-0", migrate_error=True, after_error=libvirt.VIR_DOMAIN_PAUSED)
    hv, _ = hypervisor(dom)
    with pytest.raises(MigrationOutcomeUnknown):
        hv.migrate("demo--db-0", "qemu+tcp://10.99.0.12/system")
    assert hv.migrations["demo--db-0"]["state"] == "unknown"


def test_r12_an_error_with_the_vm_still_running_here_is_failed() -> None:
    dom = FakeDomain("demo--db-0", migrate_error=True)
    hv, _ = hypervisor(dom)
    with pytest.raises(HypervisorError) as e:
        hv.migrate("demo--db-0", "qemu+tcp://10.99.0.12/system")
    assert not isinstance(e.value, MigrationOutcomeUnknown) and "keeps running on this host" in str(e.value)
    assert hv.migrations["demo--db-0"]["state"] == "failed"


def test_r12_a_recovered_migration_whose_vm_is_defined_but_not_running_here_is_unknown() -> None:
    assert settle_recovered({}, still_here=False, still_active=False, present=True)["state"] == "unknown"  # type: ignore[index]
    assert settle_recovered({}, still_here=False, still_active=False, present=False) == {"state": "completed"}
    assert settle_recovered({}, still_here=True, still_active=False, present=True)["state"] == "failed"  # type: ignore[index]


def test_r12_a_vm_that_left_by_migration_is_started_again_only_on_the_managers_word() -> None:
    vm = {"name": "demo--db-0", "vcpus": 1, "memory_mib": 128, "nics": []}
    here = Here([], [], departed={"demo--db-0": "a1"})
    assert [(a.op, a.args["attempt"]) for a in converge({"vms": [vm]}, here)] == [("vm.hold", "a1")]
    stale = {**vm, "restart_departed": "a0"}  # a decision about an older departure does not count
    assert [a.op for a in converge({"vms": [stale]}, here)] == ["vm.hold"]
    assert [a.op for a in converge({"vms": [{**vm, "restart_departed": "a1"}]}, here)] == ["vm.start"]
    assert [a.op for a in converge({"vms": [vm]}, Here([], []))] == ["vm.start"]  # never left: start it


class FakeVms:
    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv


def client(hv: Hypervisor) -> Reconciler:
    """A Reconciler without its link to the manager: only the VM bookkeeping is exercised."""
    c = Reconciler.__new__(Reconciler)
    c.vms = FakeVms(hv)  # type: ignore[assignment]
    c.migrations = Migrations(c.vms)
    c._stopping = {}
    return c


def test_r12_departures_are_kept_until_the_manager_stops_listing_the_vm_not_for_a_while() -> None:
    hv, _ = hypervisor()
    c = Migrations(FakeVms(hv))  # type: ignore[arg-type]
    c.outgoing["demo--db-0"] = {"attempt": "a1", "to": "h2", "state": "unknown", "ended": 0.0}
    c.outgoing["demo--web-0"] = {"attempt": "a2", "to": "h3", "state": "failed", "ended": 0.0}
    assert c.departures({"demo--db-0", "demo--web-0"}) == {"demo--db-0": "a1"}  # failed: still here
    del c.outgoing["demo--db-0"]
    assert c.departures({"demo--db-0"}) == {"demo--db-0": "a1"}  # however long ago (no timer)
    assert c.departures(set()) == {}  # the manager took note of the move: forgotten
    # Moved through the local API, behind the manager's back: remembered just the same, once.
    hv.migrations["demo--web-1"] = {"name": "demo--web-1", "dest": "qemu+tcp://10.99.0.13/system",
                                    "state": "completed", "started": 5.0}
    assert c.departures({"demo--web-1"}) == {"demo--web-1": "local-5"}
    assert c.departed["demo--web-1"]["to"] == "qemu+tcp://10.99.0.13/system"
    assert c.departures(set()) == {} and c.departures({"demo--web-1"}) == {}  # a later start here is fine


# --- R20: the source dials nothing but an allowed migration URI --------------------------------


@pytest.mark.adversarial
@pytest.mark.parametrize("uri", ["qemu+ext:///system?command=/sbin/reboot", "qemu+tcp://10.0.0.1/system?socket=/x",
                                 "qemu+ssh://root@10.0.0.1/system", "qemu+tcp://host.example/system"])
def test_r20_the_source_refuses_a_migration_uri_outside_the_allowed_form(uri: str) -> None:
    dom = FakeDomain("demo--db-0")
    hv, _ = hypervisor(dom)
    with pytest.raises(HypervisorError) as e:
        hv.migrate("demo--db-0", uri)
    assert "refused" in str(e.value) and dom.calls == []  # libvirt was never asked


# --- R27: adopt, and how VMs stop -------------------------------------------------------------


def test_r27_adopt_skips_a_domain_paused_for_an_incoming_migration_and_does_not_announce_it() -> None:
    running = FakeDomain("demo--web-0")
    incoming = FakeDomain("demo--db-0", libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
    paused = FakeDomain("demo--web-1", libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
    hv, arrived = hypervisor(running, incoming, paused)
    assert hv.adopt() == ["demo--web-0", "demo--web-1"]
    assert arrived == ["demo--web-0", "demo--web-1"]  # on_arrive registers and announces: not for db-0


def test_r27_a_vm_the_manager_ran_here_is_stopped_gracefully_and_destroyed_after_its_grace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dom = FakeDomain("demo--db-0")
    hv, _ = hypervisor(dom)
    c = client(hv)
    clock = [100.0]
    monkeypatch.setattr("gatekeeper.reconciler.time.monotonic", lambda: clock[0])
    c._stop("demo--db-0", force=False)
    assert dom.calls == ["shutdown"]  # ACPI, and the sync loop goes on
    clock[0] += GRACEFUL_STOP_S / 2
    c._stop("demo--db-0", force=False)
    assert dom.calls == ["shutdown", "shutdown"]  # still within its grace: asked again, not destroyed
    clock[0] += GRACEFUL_STOP_S
    c._stop("demo--db-0", force=False)
    assert dom.calls[-2:] == ["destroy", "undefine"] and "demo--db-0" not in c._stopping


def test_r27_a_guest_that_powered_off_is_undefined_without_destroy() -> None:
    dom = FakeDomain("demo--db-0")
    hv, _ = hypervisor(dom)
    c = client(hv)
    c._stop("demo--db-0", force=False)
    dom.st = libvirt.VIR_DOMAIN_SHUTOFF  # the guest obeyed
    c._stop("demo--db-0", force=False)
    assert dom.calls == ["shutdown", "undefine"]


def test_r27_converge_stops_gracefully_what_the_manager_ran_here_and_destroys_a_stray_copy() -> None:
    vms = [{"name": "demo--db-0", "state": "running"}, {"name": "demo--web-0", "state": "running"}]
    actions = converge({"vms": []}, Here([], vms, told={"demo--db-0"}))
    assert {a.args["name"]: a.args["force"] for a in actions if a.op == "vm.stop"} == \
        {"demo--db-0": False, "demo--web-0": True}


def test_r27_a_vnet_stays_while_a_vm_on_it_shuts_down_gracefully() -> None:
    vm = {"name": "demo--db-0", "state": "running", "nics": [{"vnet": 2, "mac": "52:54:00:00:00:01", "tap": "vnet0"}]}
    stopping = converge({"vnets": [], "vms": []}, Here([2], [vm], {2}, ports={2: ["vnet0"]}, told={"demo--db-0"}))
    assert [(a.op, a.args.get("force")) for a in stopping] == [("vm.stop", False)]  # no vnet.delete yet
    off = {**vm, "state": "shutoff", "nics": [{"vnet": 2, "mac": "52:54:00:00:00:01", "tap": None}]}
    gone = converge({"vnets": [], "vms": []}, Here([2], [off], {2}, ports={2: []}, told={"demo--db-0"}))
    assert [a.op for a in gone] == ["vm.stop", "vnet.delete"]  # undefined, then the VNET goes


def test_r5_a_stray_copy_destroyed_here_is_said_in_the_reports_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatekeeper.reconciler import STRAY_NOTED_S, STRAYS_KEPT

    hv, _ = hypervisor()
    c = client(hv)
    clock = [1000.0]
    monkeypatch.setattr("gatekeeper.reconciler.time.monotonic", lambda: clock[0])
    c._strays = {f"demo--web-{i}": 1000.0 - i for i in range(STRAYS_KEPT + 5)}
    c.notes = []
    c._note_strays()
    assert len(c.notes) == STRAYS_KEPT and any("demo--web-0 ran here" in n for n in c.notes)  # bounded, newest kept
    clock[0] += STRAY_NOTED_S
    c.notes = []
    c._note_strays()
    assert c.notes == [] and c._strays == {}


def test_finished_attempts_are_forgotten_once_the_manager_stops_listing_the_vm_copying_ones_never() -> None:
    hv, _ = hypervisor()
    moves = Migrations(FakeVms(hv))  # type: ignore[arg-type]
    moves.outgoing = {"demo--db-0": {"attempt": "a1", "state": "completed"},
                      "demo--web-0": {"attempt": "a2", "state": "copying"},
                      "demo--web-1": {"attempt": "a3", "state": "failed"}}
    assert moves.forget({"demo--web-1"}) == {"demo--web-0": "a2", "demo--web-1": "a3"}
    assert set(moves.outgoing) == {"demo--web-0", "demo--web-1"}
