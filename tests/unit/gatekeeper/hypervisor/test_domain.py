from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gatekeeper.hypervisor.domain import NicSpec, VmSpec, domain_nics, domain_xml


def spec(**kw: object) -> VmSpec:
    base = {"name": "web-0", "kernel": "/g/vmlinuz", "initrd": "/g/initrd.img",
            "nics": (NicSpec(10, "52:54:00:00:00:01", 1452, "10.0.0.5/24"),), "console_log": "/tmp/web-0.log"}
    return VmSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_domain_is_tcg_direct_kernel_boot_on_the_vnet_bridge() -> None:
    root = ET.fromstring(domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("./os/kernel") == "/g/vmlinuz"
    cmdline = root.findtext("./os/cmdline") or ""
    assert "svip=10.0.0.5/24" in cmdline and "svmtu=1452" in cmdline and "svname=web-0" in cmdline
    iface = root.find("./devices/interface")
    assert iface is not None and iface.get("type") == "bridge"
    assert iface.find("source").get("bridge") == "vnbr10"  # type: ignore[union-attr]
    assert iface.find("mtu").get("size") == "1452"  # type: ignore[union-attr]
    assert root.find("./devices/memballoon").get("model") == "none"  # type: ignore[union-attr]


def test_kvm_disables_the_msr_pvm_cannot_set() -> None:
    root = ET.fromstring(domain_xml(spec(accel="kvm")))
    assert root.get("type") == "kvm"
    assert root.find("./cpu/feature[@name='arch-capabilities']").get("policy") == "disable"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="accel"):
        domain_xml(spec(accel="xen"))


def test_nics_read_back_from_a_live_domain() -> None:
    xml = domain_xml(spec()).replace("<model", "<target dev='vnet3'/><model")
    assert [(n.vnet, n.mac, n.tap) for n in domain_nics(xml)] == [(10, "52:54:00:00:00:01", "vnet3")]


def test_r27_domains_have_acpi_so_a_graceful_shutdown_can_reach_the_guest() -> None:
    import xml.etree.ElementTree as ET

    from gatekeeper.hypervisor.domain import VmSpec, domain_xml

    root = ET.fromstring(domain_xml(VmSpec("demo--db-0", "/k", "/i")))
    assert root.find("./features/acpi") is not None
    hpet = root.find("./clock/timer[@name='hpet']")  # a guest migrated mid-boot panicked in hpet_enable
    assert hpet is not None and hpet.get("present") == "no"
