"""The gatekeeper's VM operations: VM specs from API requests, on top of the hypervisor driver,
wired to the VNET service so a VM's MACs are local exactly while it runs here."""

from __future__ import annotations

import os
import threading
from typing import Any

from gatekeeper.config import HypervisorConfig
from gatekeeper.hypervisor.domain import DomainNic, NicSpec, VmSpec
from gatekeeper.hypervisor.driver import Hypervisor, HypervisorError
from gatekeeper.vnet.requests import parse_mac
from gatekeeper.vnet.service import VnetService

ANNOUNCE_REPEATS = (0.5, 1.5)  # seconds after the first gratuitous ANNOUNCE


class VmService:
    def __init__(self, config: HypervisorConfig, vnets: VnetService) -> None:
        self.config = config
        self.vnets = vnets
        self.hv = Hypervisor(config.uri, self._arrived, self._left)

    def _arrived(self, nics: list[DomainNic], _name: str) -> None:
        # Tell every host first: registering takes milliseconds more (the bridge's FDB is read over
        # netlink), and until the ANNOUNCE arrives a host that has not learned the guest's RARP
        # still sends its frames to the old host (docs/ebpf.md, "Migration on the eBPF path").
        for nic in nics:
            if nic.vnet in self.vnets.forwarder.vnets:
                self.vnets.announce(nic.vnet, nic.mac)
        for nic in nics:
            self.vnets.register_local(nic.vnet, nic.mac, nic.tap)  # announces again
        # Repeat, as QEMU repeats its RARPs: the source host may still hold the MAC as local for a
        # moment after the guest resumed here, and would ignore the first announce.
        for delay in ANNOUNCE_REPEATS:
            timer = threading.Timer(delay, self._announce_again, (nics,))
            timer.daemon = True
            timer.start()

    def _announce_again(self, nics: list[DomainNic]) -> None:
        for nic in nics:
            if nic.vnet in self.vnets.forwarder.vnets:
                self.vnets.announce(nic.vnet, nic.mac)

    def _left(self, nics: list[DomainNic], _name: str) -> None:
        for nic in nics:
            self.vnets.unregister_local(nic.vnet, nic.mac)

    def start(self, name: str, nics: list[dict[str, Any]], vcpus: int = 1, memory_mib: int = 128,
              accel: str | None = None) -> dict[str, Any]:
        if not name or not name.replace("-", "").isalnum() or len(name) > 50:
            raise HypervisorError(f"name: {name!r}; use letters, digits and '-' (at most 50)")
        if not 1 <= int(vcpus) <= 64 or not 32 <= int(memory_mib) <= 1 << 20:
            raise HypervisorError(f"vcpus {vcpus} / memory_mib {memory_mib} out of range (1..64 / 32..1048576)")
        specs = []
        for i, nic in enumerate(nics):
            if nic.get("bridge"):  # a plain bridge, outside any VNET (no VARP)
                mac = parse_mac(str(nic.get("mac", ""))).hex(":")
                specs.append(NicSpec(0, mac, int(nic.get("mtu", 1500)), nic.get("ip"), str(nic["bridge"])))
                continue
            vnet = nic.get("vnet")
            port = self.vnets.forwarder.vnets.get(vnet) if isinstance(vnet, int) else None
            if port is None or not isinstance(vnet, int):
                raise HypervisorError(f"nics[{i}].vnet: {vnet!r} does not exist on this host; create it first")
            mac = parse_mac(str(nic.get("mac", ""))).hex(":")
            specs.append(NicSpec(vnet, mac, port.mtu, nic.get("ip")))
        console = os.path.join(self.config.console_dir, f"{name}.log") if self.config.console_dir else None
        spec = VmSpec(name, self.config.kernel, self.config.initrd, int(vcpus), int(memory_mib), tuple(specs),
                      accel or self.config.accel, console, extra_cmdline=_probe_arg(nics))
        return self.hv.start(spec)

    def migrate(self, name: str, dest_uri: str, bandwidth_mib: int = 0, downtime_ms: int = 0) -> dict[str, Any]:
        """Live-migrate; meanwhile the VM's MACs may move: the destination's ANNOUNCE for them,
        which arrives while the VM is still registered here, is then believed at once."""
        nics = [(n.vnet, n.mac) for n in self.hv.nics(name) if n.vnet]
        for vnet, mac in nics:
            self.vnets.expect_departure(vnet, mac, True)
        try:
            return self.hv.migrate(name, dest_uri, bandwidth_mib, downtime_ms)
        except BaseException:
            for vnet, mac in nics:
                self.vnets.expect_departure(vnet, mac, False)
            raise

    def operations(self) -> dict[str, Any]:
        hv = self.hv
        return {
            "vm.start": self.start,
            "vm.stop": hv.stop,
            "vm.list": hv.domains,
            "vm.stats": hv.stats,
            "vm.pause": hv.pause,
            "vm.resume": hv.resume,
            "vm.migrate": self.migrate,
            "vm.job": hv.job,
            "vm.cancel": hv.cancel,
            "vm.completed_job": hv.completed_job,
            "vm.adopt": hv.adopt,
        }


def _probe_arg(nics: list[dict[str, Any]]) -> str:
    """Addresses the test guest should ping and fetch over HTTP (it reports on /probe): those
    asked for, else the NIC's peers on its VNET (the manager lists them)."""
    probes = [str(p) for nic in nics for p in nic.get("probe", nic.get("peers", []))]
    return f"svprobe={','.join(probes)}" if probes else ""
