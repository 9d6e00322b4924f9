from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gatekeeper.hypervisor.domain import DiskSpec, NicSpec, VmSpec, domain_nics, domain_xml


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


def test_volumes_are_virtio_disks_a_pool_file_or_an_nbd_tls_export(tmp_path: Path) -> None:
    spec = VmSpec("shop--db-0", "/k", "/i", disks=(DiskSpec("vdb", path="/pool/shop--db-0--root.qcow2"),
                                                    DiskSpec("vdc", nbd=("10.100.0.3", 10810, "shop--db-0--data"))))
    xml = domain_xml(spec)
    disks = ET.fromstring(xml).findall("devices/disk")
    local, remote = disks
    assert (local.get("type"), local.find("source").get("file"), local.find("driver").get("type")) == (  # type: ignore[union-attr]
        "file", "/pool/shop--db-0--root.qcow2", "qcow2")
    src = remote.find("source")
    assert remote.get("type") == "network" and src is not None
    assert (src.get("protocol"), src.get("name"), src.get("tls")) == ("nbd", "shop--db-0--data", "yes")
    host = src.find("host")
    assert host is not None and (host.get("name"), host.get("port")) == ("10.100.0.3", "10810")
    assert [d.find("target").get("dev") for d in disks] == ["vdb", "vdc"]  # type: ignore[union-attr]
    assert all(d.find("driver").get("cache") == "none" for d in disks)  # type: ignore[union-attr]
    (tmp_path / "d.xml").write_text(xml)
    check = subprocess.run(["virt-xml-validate", str(tmp_path / "d.xml"), "domain"], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr  # libvirt's own schema
    with pytest.raises(ValueError, match="disk vdb: give one of"):
        domain_xml(VmSpec("x", "/k", "/i", disks=(DiskSpec("vdb"),)))


def test_a_volume_s_qos_limits_are_libvirt_iotune(tmp_path: Path) -> None:
    spec = VmSpec("shop--db-0", "/k", "/i", disks=(
        DiskSpec("vdb", nbd=("10.100.0.3", 10810, "shop--db-0--data"), iops=200, bytes_sec=4_000_000),
        DiskSpec("vdc", path="/pool/v.qcow2", iops=50), DiskSpec("vdd", path="/pool/w.qcow2")))
    xml = domain_xml(spec)
    limited, iops_only, free = ET.fromstring(xml).findall("devices/disk")
    assert limited.findtext("iotune/total_iops_sec") == "200"
    assert limited.findtext("iotune/total_bytes_sec") == "4000000"
    assert iops_only.findtext("iotune/total_iops_sec") == "50" and iops_only.find("iotune/total_bytes_sec") is None
    assert free.find("iotune") is None
    (tmp_path / "d.xml").write_text(xml)
    check = subprocess.run(["virt-xml-validate", str(tmp_path / "d.xml"), "domain"], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr


def test_a_mirrored_volume_is_nbd_over_the_local_quorum_socket(tmp_path: Path) -> None:
    sock = "/run/softudc/volumes/m-0123/nbd.sock"
    xml = domain_xml(VmSpec("shop--db-0", "/k", "/i", disks=(DiskSpec("vdb", unix=(sock, "shop--db-0--data")),)))
    disk = ET.fromstring(xml).find("devices/disk")
    assert disk is not None and disk.get("type") == "network"
    src = disk.find("source")
    assert src is not None and (src.get("protocol"), src.get("name"), src.get("tls")) == ("nbd", "shop--db-0--data",
                                                                                           None)
    host = src.find("host")
    assert host is not None and (host.get("transport"), host.get("socket")) == ("unix", sock)
    (tmp_path / "d.xml").write_text(xml)
    check = subprocess.run(["virt-xml-validate", str(tmp_path / "d.xml"), "domain"], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    with pytest.raises(ValueError, match="give one of"):
        domain_xml(VmSpec("x", "/k", "/i", disks=(DiskSpec("vdb", path="/p", unix=(sock, "v")),)))
