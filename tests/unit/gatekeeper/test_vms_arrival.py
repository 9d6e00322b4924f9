"""VmService on a VM's arrival (libvirt's resume event after a live migration): every host is told
by a gratuitous ANNOUNCE before the slower local registration, and again after it."""

from __future__ import annotations

from typing import Any

from gatekeeper.config import HypervisorConfig
from gatekeeper.hypervisor.domain import DomainNic
from gatekeeper.vms import VmService


class FakeForwarder:
    def __init__(self, vnets: set[int]) -> None:
        self.vnets = dict.fromkeys(vnets)


class FakeVnets:
    def __init__(self, vnets: set[int]) -> None:
        self.forwarder = FakeForwarder(vnets)
        self.calls: list[tuple[Any, ...]] = []

    def announce(self, vnet: int, mac: str) -> dict[str, Any]:
        self.calls.append(("announce", vnet, mac))
        return {}

    def register_local(self, vnet: int, mac: str, ifname: str | None) -> None:
        self.calls.append(("register_local", vnet, mac, ifname))


def test_an_arriving_vm_is_announced_before_it_is_registered() -> None:
    vnets = FakeVnets({10})
    svc = VmService(HypervisorConfig("qemu:///nowhere", "k", "i"), vnets)  # type: ignore[arg-type]
    nics = [DomainNic(10, "52:54:00:00:aa:01", "vnet3"), DomainNic(11, "52:54:00:00:aa:02", "vnet4")]
    svc._arrived(nics, "vm1")
    assert vnets.calls[:3] == [("announce", 10, "52:54:00:00:aa:01"),  # vnet 11 is not here: no announce
                               ("register_local", 10, "52:54:00:00:aa:01", "vnet3"),
                               ("register_local", 11, "52:54:00:00:aa:02", "vnet4")]
