"""libvirt domain XML, built in one declarative place from a `VmSpec`, and read back.

A SoftUDC VM boots a kernel directly; its volumes are virtio disks (a pool file, or an NBD+TLS
export of another host: gatekeeper/volumes); each NIC is a virtio interface on the bridge
of its VNET, with the MTU the VNET allows, so the guest never sends a frame the underlay cannot
carry. The serial console goes to a log file (and a pty for interactive use).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from gatekeeper.vnet.devices import bridge_name


@dataclass(frozen=True)
class NicSpec:
    vnet: int
    mac: str
    mtu: int = 1452
    ip: str | None = None  # address/prefix the guest configures (passed on its command line)
    bridge: str | None = None  # a plain bridge instead of the VNET's (benchmark baselines)


@dataclass(frozen=True)
class DiskSpec:
    """A volume the VM sees as a virtio disk (`target`: vdb, vdc...): a qcow2 file of the host's
    pool (`path`), or another host's export over NBD+TLS (`nbd`: address, port, export name;
    libvirt's client certificate is qemu.conf's nbd_tls_x509_cert_dir)."""

    target: str
    path: str | None = None
    nbd: tuple[str, int, str] | None = None
    unix: tuple[str, str] | None = None  # NBD over a local socket, export name (a mirrored volume's quorum)
    iops: int | None = None  # QoS (issue 13): <iotune> total_iops_sec
    bytes_sec: int | None = None  # QoS: <iotune> total_bytes_sec


@dataclass(frozen=True)
class VmSpec:
    name: str
    kernel: str
    initrd: str
    vcpus: int = 1
    memory_mib: int = 128
    nics: tuple[NicSpec, ...] = ()
    accel: str = "qemu"  # "qemu" (TCG) or "kvm"
    console_log: str | None = None
    extra_cmdline: str = ""
    disks: tuple[DiskSpec, ...] = ()

    @property
    def cmdline(self) -> str:
        args = ["console=ttyS0", "quiet", "panic=-1", f"svname={self.name}"]
        if self.nics:
            first = self.nics[0]
            args.append(f"svmtu={first.mtu}")
            if first.ip:
                args.append(f"svip={first.ip}")
        if self.extra_cmdline:
            args.append(self.extra_cmdline)
        return " ".join(args)


NS = "https://softudc.io/xmlns/vm/1"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: VmSpec) -> str:
    if spec.accel not in ("qemu", "kvm"):
        raise ValueError(f"accel {spec.accel!r}: expected qemu (TCG) or kvm")
    dom = ET.Element("domain", {"type": spec.accel})
    _sub(dom, "name", spec.name)
    meta = _sub(dom, "metadata")
    sv = ET.SubElement(meta, f"{{{NS}}}vm")
    for nic in spec.nics:
        ET.SubElement(sv, f"{{{NS}}}nic", {"vnet": str(nic.vnet), "mac": nic.mac, "mtu": str(nic.mtu),
                                           **({"ip": nic.ip} if nic.ip else {})})
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_, "kernel", spec.kernel)
    _sub(os_, "initrd", spec.initrd)
    _sub(os_, "cmdline", spec.cmdline)
    # ACPI: a graceful stop (virDomainShutdown: the power button) needs it; without it QEMU runs
    # with -no-acpi and every stop ends in destroy after its grace period (R27b).
    _sub(_sub(dom, "features"), "acpi")
    # No HPET (ACPI's tables bring one; before ACPI the guests had none): a guest live-migrated
    # under TCG while its kernel set the HPET up panicked in hpet_enable on arrival. Linux keeps
    # time with the TSC and PIT, as it did here before.
    _sub(_sub(dom, "clock", offset="utc"), "timer", name="hpet", present="no")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "destroy")
    _sub(dom, "on_crash", "destroy")
    if spec.accel == "kvm":
        cpu = _sub(dom, "cpu", mode="host-passthrough")
        _sub(cpu, "feature", policy="disable", name="arch-capabilities")
    dev = _sub(dom, "devices")
    for nic in spec.nics:
        iface = _sub(dev, "interface", type="bridge")
        _sub(iface, "source", bridge=nic.bridge or bridge_name(nic.vnet))
        _sub(iface, "mac", address=nic.mac)
        _sub(iface, "model", type="virtio")
        _sub(iface, "mtu", size=str(nic.mtu))
    for disk in spec.disks:
        _disk(dev, disk)
    serial = _sub(dev, "serial", type="pty")
    if spec.console_log:
        _sub(serial, "log", file=spec.console_log, append="on")
    _sub(serial, "target", port="0")
    _sub(dev, "console", type="pty")
    _sub(dev, "memballoon", model="none")
    ET.register_namespace("softudc", NS)
    return ET.tostring(dom, encoding="unicode")


def _disk(dev: ET.Element, disk: DiskSpec) -> None:
    """cache=none: a live migration with a disk on shared storage (the NBD export) is safe only
    without the host's page cache (libvirt refuses it otherwise)."""
    if [disk.path, disk.nbd, disk.unix].count(None) != 2:
        raise ValueError(f"disk {disk.target}: give one of a pool file, an NBD export or a local NBD socket")
    if disk.unix is not None:  # gatekeeper/volumes/mirror.py: the quorum's daemon on this host, no TLS
        el = _sub(dev, "disk", type="network", device="disk")
        _sub(el, "driver", name="qemu", type="raw", cache="none")
        sock, export = disk.unix
        _sub(_sub(el, "source", protocol="nbd", name=export), "host", transport="unix", socket=sock)
    elif disk.nbd is not None:
        el = _sub(dev, "disk", type="network", device="disk")
        _sub(el, "driver", name="qemu", type="raw", cache="none")  # the export serves the qcow2 decoded
        address, port, export = disk.nbd
        src = _sub(el, "source", protocol="nbd", name=export, tls="yes")
        _sub(src, "host", name=address, port=str(port))
    else:
        assert disk.path is not None
        el = _sub(dev, "disk", type="file", device="disk")
        _sub(el, "driver", name="qemu", type="qcow2", cache="none")
        _sub(el, "source", file=disk.path)
    _sub(el, "target", dev=disk.target, bus="virtio")
    if disk.iops or disk.bytes_sec:  # QEMU's throttling of this disk: a noisy volume cannot starve the others
        tune = _sub(el, "iotune")
        if disk.bytes_sec:
            _sub(tune, "total_bytes_sec", str(disk.bytes_sec))
        if disk.iops:
            _sub(tune, "total_iops_sec", str(disk.iops))


@dataclass(frozen=True)
class DomainNic:
    vnet: int
    mac: str
    tap: str | None


def domain_nics(xml: str) -> list[DomainNic]:
    """The VNET NICs of a (live) domain: bridge vnbr<ID>, MAC, and the tap libvirt made."""
    root = ET.fromstring(xml)
    out = []
    for iface in root.findall("./devices/interface"):
        source = iface.find("source")
        mac = iface.find("mac")
        target = iface.find("target")
        bridge = source.get("bridge", "") if source is not None else ""
        if not bridge.startswith("vnbr") or mac is None:
            continue
        tap = target.get("dev") if target is not None else None
        out.append(DomainNic(int(bridge[4:]), mac.get("address", ""), tap))
    return out
