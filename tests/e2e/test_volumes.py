"""The storage service end to end (issue 13 item 1): a volume on h2 exported over NBD+TLS to the
hosts on its allow list, checked from the other hosts' namespaces with independent clients
(nbdinfo from libnbd, qemu-img, qemu-io) with the certificates the hosts got when they joined the
lab's manager (they serve the exports too). One lab for the module."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from softudc.lab import Lab, LabSpec, lab_down, lab_up, shell
from softudc.lab.lab import start_gatekeeper, stop_gatekeeper
from softudc.localapi import LocalApiClient, LocalApiError

pytestmark = pytest.mark.volumes

MiB = 1 << 20


@dataclass
class World:
    lab: Lab
    h2: LocalApiClient

    def certs(self, host: str) -> Path:
        """The host's join certificate in QEMU's layout (the lab's [volumes] tls_dir)."""
        return Path(self.lab.manager_files[host]["nbd"])


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        print("SKIP: end-to-end tests need root (network namespaces)")
        pytest.skip("needs root")
    state = tempfile.mkdtemp(prefix="sudv")
    lab = lab_up(LabSpec(name="v" + secrets.token_hex(3), hosts=3, manager=True), state)
    try:
        yield World(lab, LocalApiClient(lab.host("h2").api_socket))
    finally:
        lab_down(lab.spec.name, lab.state_dir)
        assert not [ns for ns in shell.netns_list() if ns.startswith(lab.prefix)]
        shutil.rmtree(state, ignore_errors=True)


def _in(w: World, host: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", w.lab.host(host).netns, *argv], capture_output=True, text=True,
                          timeout=30, check=False)


def nbdinfo(w: World, host: str, export: dict[str, Any], cert: str | None) -> subprocess.CompletedProcess[str]:
    uri = export["uri"] + (f"?tls-certificates={w.certs(cert)}" if cert else "")
    if cert is None:
        uri = uri.replace("nbds://", "nbd://")
    return _in(w, host, "nbdinfo", "--size", uri)


def qemu_client(w: World, host: str, tool: list[str], export: dict[str, Any],
                *args: str) -> subprocess.CompletedProcess[str]:
    """qemu-img/qemu-io from `host`'s namespace, with `host`'s client certificate."""
    opts = f"driver=nbd,host={export['address']},port={export['port']},export={export['volume']},tls-creds=t0"
    creds = f"tls-creds-x509,id=t0,dir={w.certs(host)},endpoint=client"
    return _in(w, host, *tool, "--object", creds, "--image-opts", *args, opts)


def test_export_admits_listed_hosts_only_and_follows_the_list(world: World) -> None:
    w = world
    vol = w.h2.call("volume.create", name="data1", size_bytes=64 * MiB)
    assert vol["size_bytes"] == 64 * MiB
    export = w.h2.call("volume.export", name="data1", allowed=["h1"])
    assert export["address"] == w.lab.host("h2").underlay_ip
    ok = nbdinfo(w, "h1", export, "h1")
    assert ok.stdout.strip() == str(64 * MiB), ok.stderr
    info = qemu_client(w, "h1", ["qemu-img", "info"], export)
    assert f"({64 * MiB} bytes)" in info.stdout, info.stderr
    plain = nbdinfo(w, "h1", export, None)
    assert plain.returncode != 0 and "TLS" in plain.stderr
    assert nbdinfo(w, "h3", export, "h3").returncode != 0  # h3's certificate is valid but not on the list
    w.h2.call("volume.allow", name="data1", allowed=["h1", "h3"])  # a VM of the farm moved to h3
    assert nbdinfo(w, "h3", export, "h3").returncode == 0


def test_a_write_from_h1_reads_back_from_h3(world: World) -> None:
    w = world
    export = w.h2.call("volume.describe", name="data1")["export"]
    write = qemu_client(w, "h1", ["qemu-io"], export, "-c", "write -P 0x5a 1M 4M")
    assert "wrote 4194304/4194304" in write.stdout, write.stderr
    read = qemu_client(w, "h3", ["qemu-io"], export, "-c", "read -P 0x5a 1M 4M", "-c", "read -P 0 0 1M")
    assert read.stdout.count("read ") == 2 and "Pattern verification failed" not in read.stdout, read.stdout
    assert w.h2.call("volume.describe", name="data1")["allocated_bytes"] >= 4 * MiB


def test_a_clone_of_a_master_is_served_and_snapshotted_while_exported(world: World) -> None:
    w = world
    w.h2.call("volume.create", name="gold", size_bytes=32 * MiB)
    w.h2.call("volume.export", name="gold", allowed=["h1"])
    gold = w.h2.call("volume.describe", name="gold")["export"]
    assert "wrote" in qemu_client(w, "h1", ["qemu-io"], gold, "-c", "write -P 0x6b 0 2M").stdout
    w.h2.call("volume.unexport", name="gold")
    clone = w.h2.call("volume.create", name="gold-c1", backing="gold")  # the master's size
    assert (clone["size_bytes"], clone["backing"]) == (32 * MiB, "gold.qcow2")
    export = w.h2.call("volume.export", name="gold-c1", allowed=["h3"])
    read = qemu_client(w, "h3", ["qemu-io"], export, "-c", "read -P 0x6b 0 2M", "-c", "write -P 0x7c 0 1M")
    assert "Pattern verification failed" not in read.stdout and "wrote" in read.stdout, read.stdout + read.stderr
    snap = w.h2.call("volume.snapshot", name="gold-c1", snapshot="s1")  # by QMP: the export goes on
    assert snap["snapshots"] == ["s1"] and nbdinfo(w, "h3", export, "h3").returncode == 0
    w.h2.call("volume.unexport", name="gold-c1")
    w.h2.call("volume.delete", name="gold-c1")
    w.h2.call("volume.delete", name="gold")


def test_exports_survive_a_gatekeeper_restart(world: World) -> None:
    w = world
    before = w.h2.call("volume.describe", name="data1")["export"]
    stop_gatekeeper(w.lab.host("h2"))
    start_gatekeeper(w.lab, w.lab.host("h2"))
    after = w.h2.call("volume.describe", name="data1")["export"]
    assert after["pid"] == before["pid"] and after["allowed"] == ["h1", "h3"]  # adopted, not restarted
    assert nbdinfo(w, "h3", after, "h3").returncode == 0


def test_delete_leaves_no_export_file_or_daemon(world: World) -> None:
    w = world
    with pytest.raises(LocalApiError, match="unexport it first"):
        w.h2.call("volume.delete", name="data1")
    export = w.h2.call("volume.describe", name="data1")["export"]
    w.h2.call("volume.unexport", name="data1")
    w.h2.call("volume.delete", name="data1")
    assert w.h2.call("volume.list") == []
    hdir = Path(w.lab.host("h2").config_path).parent
    assert not (hdir / "pool" / "data1.qcow2").exists()
    assert not (hdir / "volumes" / "data1" / "export.json").exists()
    assert not shell.pid_alive(export["pid"])
    assert nbdinfo(w, "h1", export, "h1").returncode != 0
