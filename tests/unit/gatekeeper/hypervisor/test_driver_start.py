"""Starting a VM whose name a shut-off domain still holds (a guest that powered itself off, a host
that crashed): the old definition gives way, as libvirt would refuse a second one under a new UUID
forever; a running one is never touched."""

from __future__ import annotations

import libvirt
import pytest

from gatekeeper.hypervisor.domain import VmSpec
from gatekeeper.hypervisor.driver import HypervisorError
from tests.unit.gatekeeper.hypervisor.test_driver_migration import FakeConn, FakeDomain, hypervisor


class DefiningConn(FakeConn):
    """libvirt's rule: a name already defined under another UUID cannot be defined again."""

    def defineXML(self, xml: str) -> FakeDomain:
        name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
        if name in self.doms:
            raise libvirt.libvirtError(f"operation failed: domain '{name}' already exists with uuid 1234")
        dom = Started(name, libvirt.VIR_DOMAIN_SHUTOFF)
        self.doms[name] = dom
        return dom


class Started(FakeDomain):
    def create(self) -> None:
        self.calls.append("create")
        self.st = libvirt.VIR_DOMAIN_RUNNING

    def info(self) -> list[int]:
        return [self.st, 131072, 0, 1, 0]


def with_conn(*doms: FakeDomain) -> tuple[object, DefiningConn]:
    hv, _ = hypervisor()
    conn = DefiningConn(*doms)
    for d in doms:
        def undefine(d: FakeDomain = d) -> None:
            d.calls.append("undefine")
            conn.doms.pop(d.name())

        d.undefine = undefine  # type: ignore[method-assign]
    hv._conn = conn
    return hv, conn


def test_a_shut_off_definition_of_the_name_gives_way_and_the_vm_starts() -> None:
    stale = FakeDomain("demo--web-0", libvirt.VIR_DOMAIN_SHUTOFF)
    hv, conn = with_conn(stale)
    out = hv.start(VmSpec("demo--web-0", "/k", "/i"))  # type: ignore[attr-defined]
    assert stale.calls == ["undefine"] and out["state"] == "running"
    assert conn.doms["demo--web-0"].calls == ["create"]


def test_a_running_vm_of_the_name_is_never_touched() -> None:
    running = FakeDomain("demo--web-0")
    hv, conn = with_conn(running)
    with pytest.raises(HypervisorError, match="already running on this host"):
        hv.start(VmSpec("demo--web-0", "/k", "/i"))  # type: ignore[attr-defined]
    assert running.calls == [] and conn.doms["demo--web-0"] is running


def test_the_disks_attached_for_a_start_go_into_its_domain_once() -> None:
    from gatekeeper.hypervisor.domain import DiskSpec

    class Seeing(DefiningConn):
        def defineXML(self, xml: str) -> FakeDomain:
            seen.append(xml)
            return super().defineXML(xml)

    seen: list[str] = []
    hv, _ = hypervisor()
    hv._conn = Seeing()
    hv.attach["demo--web-0"] = (DiskSpec("vdb", nbd=("10.0.0.2", 10810, "demo--web-0--data")),)
    hv.start(VmSpec("demo--web-0", "/k", "/i"))
    assert "<source protocol=\"nbd\" name=\"demo--web-0--data\" tls=\"yes\"><host name=\"10.0.0.2\" port=\"10810\"" \
        in seen[0] and hv.attach == {}
