"""Exports against real qsd and independent NBD clients (nbdinfo from libnbd, qemu-img)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from gatekeeper.volumes.daemon import DaemonError
from gatekeeper.volumes.exports import authz_rules, check_hosts, nodelay_listener
from gatekeeper.volumes.pool import VolumeError
from gatekeeper.volumes.service import VolumeService
from softudc.pids import pid_alive

MiB = 1 << 20


def nbdinfo(uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True, timeout=20, check=False)


def tls_uri(export: dict[str, object], client: Path | None) -> str:
    if client is None:
        return f"nbd://127.0.0.1:{export['port']}/{export['volume']}"
    return f"{export['uri']}?tls-certificates={client}"


def test_export_admits_only_allowed_hosts_and_follows_updates(service: VolumeService, certs: Path) -> None:
    service.create("v1", 8 * MiB)
    e = service.export("v1", ["h1"])
    assert e["running"] and e["allowed"] == ["h1"]
    assert nbdinfo(tls_uri(e, certs / "h1")).stdout.strip() == str(8 * MiB)
    assert nbdinfo(tls_uri(e, certs / "h3")).returncode != 0  # a valid cert, not on the list
    plain = nbdinfo(tls_uri(e, None))
    assert plain.returncode != 0 and "TLS" in plain.stderr
    record = next(service.exports.run_dir.glob("*/export.json"))
    before = record.stat().st_ino
    service.allow("v1", ["h1", "h3"])
    assert nbdinfo(tls_uri(e, certs / "h3")).returncode == 0
    # replaced by a rename, never rewritten in place: the report's thread reads it meanwhile
    assert record.stat().st_ino != before and [p.name for p in record.parent.glob(".*tmp")] == []
    service.allow("v1", ["h3"])
    assert nbdinfo(tls_uri(e, certs / "h1")).returncode != 0
    info = subprocess.run(["qemu-img", "info", "--object", f"tls-creds-x509,id=t0,dir={certs / 'h3'},endpoint=client",
                           "--image-opts", f"driver=nbd,host=127.0.0.1,port={e['port']},export=v1,tls-creds=t0"],
                          capture_output=True, text=True, timeout=20, check=False)
    assert f"({8 * MiB} bytes)" in info.stdout, info.stderr


def test_delete_refused_while_exported_then_nothing_left(service: VolumeService) -> None:
    service.create("v2", MiB)
    e = service.export("v2", ["h1"])
    with pytest.raises(VolumeError, match="unexport it first"):
        service.delete("v2")
    with pytest.raises(VolumeError, match="already exported"):
        service.export("v2", ["h1"])
    pid = e["pid"]
    service.unexport("v2")
    service.delete("v2")
    assert service.volumes() == [] and service.exports.names() == []
    assert not pid_alive(pid)


def test_restore_adopts_and_restarts(service: VolumeService, tmp_path: Path) -> None:
    service.create("v3", MiB)
    e = service.export("v3", ["h1"])
    assert service.exports.restore() == []  # running: adopted
    assert service.exports.describe("v3")["pid"] == e["pid"]
    service.exports.daemon("v3").stop()  # as if the host rebooted
    assert service.exports.restore() == ["v3"]
    assert service.exports.describe("v3")["running"]
    assert service.exports.stats("v3")["wr_bytes"] == 0


def test_ports_are_distinct(service: VolumeService) -> None:
    for n in ("a", "b"):
        service.create(n, MiB)
    ports = {service.export(n, [])["port"] for n in ("a", "b")}
    assert len(ports) == 2


def test_bad_hosts_refused() -> None:
    for bad in ("h1", [1], ["a b"], ["CN=x,O=y"], ["h"] * 300):
        with pytest.raises(VolumeError, match="allowed"):
            check_hosts(bad)
    assert check_hosts(["h3", "h1", "h1"]) == ["h1", "h3"]
    assert authz_rules(["h1"]) == [{"match": "CN=h1", "policy": "allow", "format": "exact"}]


def test_restore_keeps_going_past_an_export_that_cannot_start(service: VolumeService) -> None:
    for n in ("p", "q"):
        service.create(n, MiB)
        service.export(n, ["h1"])
    service.exports.daemon("p").stop()
    service.exports.daemon("q").stop()
    with socket.socket() as squatter:  # p's port is taken by someone else meanwhile
        squatter.bind(("127.0.0.1", service.exports.describe("p")["port"]))
        squatter.listen()
        assert service.exports.restore() == ["q"]
    assert service.exports.names() == ["p", "q"] and not service.exports.describe("p")["running"]
    assert service.exports.restore() == ["p"]  # the next start brings it back


def test_a_snapshot_of_an_exported_volume_is_taken_by_its_daemon(service: VolumeService, certs: Path) -> None:
    service.create("live", 8 * MiB)
    e = service.export("live", ["h1"])
    opts = f"driver=nbd,host=127.0.0.1,port={e['port']},export=live,tls-creds=t0"
    creds = f"tls-creds-x509,id=t0,dir={certs / 'h1'},endpoint=client"
    write = subprocess.run(["qemu-io", "--object", creds, "--image-opts", "-c", "write -P 0x44 0 1M", opts],
                           capture_output=True, text=True, timeout=20, check=False)
    assert "wrote 1048576/1048576" in write.stdout, write.stderr
    assert service.snapshot("live", "s1")["snapshots"] == ["s1"]  # while exported: by QMP
    with pytest.raises(VolumeError, match="already has a snapshot s1"):
        service.snapshot("live", "s1")
    assert nbdinfo(tls_uri(e, certs / "h1")).returncode == 0  # the export goes on
    service.unexport("live")
    assert service.snapshot("live", "s2")["snapshots"] == ["s1", "s2"]  # not exported: by qemu-img


def test_a_farm_volume_s_long_id_is_exported_and_restored(service: VolumeService, certs: Path) -> None:
    vid = "shop" + "x" * 36 + "--" + "db" + "y" * 40 + "-12--" + "data" + "z" * 30  # 120 chars
    service.create(vid, MiB)
    e = service.export(vid, ["h1"])
    assert service.exports.names() == [vid] and e["volume"] == vid
    assert nbdinfo(tls_uri(e, certs / "h1")).stdout.strip() == str(MiB)
    service.exports.daemon(vid).stop()  # as if the host rebooted
    assert service.exports.restore() == [vid]
    service.unexport(vid)
    service.delete(vid)
    assert service.volumes() == [] and service.exports.names() == []


def test_the_nbd_server_listens_on_a_nodelay_socket_whose_connections_inherit_it(service: VolumeService) -> None:
    with nodelay_listener("127.0.0.1", 0) as listener, \
            socket.create_connection(listener.getsockname()[:2], timeout=5):
        conn, _ = listener.accept()
        with conn:  # QEMU 7.2's server sets no TCP_NODELAY itself: Nagle held its replies' 2nd record
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    service.create("v1", 8 * MiB)
    e = service.export("v1", ["h1"])
    argv = Path(f"/proc/{e['pid']}/cmdline").read_bytes().split(b"\0")
    assert any(a.startswith(b"addr.type=fd,") for a in argv), argv


def test_an_export_whose_port_is_taken_fails_naming_it(service: VolumeService) -> None:
    service.create("v1", 8 * MiB)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", service.exports.base_port))
        busy.listen(1)
        with pytest.raises(DaemonError, match=f"cannot listen on 127.0.0.1:{service.exports.base_port}"):
            service.export("v1", ["h1"])
    assert not service.exports.exported("v1")
