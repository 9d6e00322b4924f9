"""Real qemu-storage-daemons on loopback, certificates from a real SoftUDC CA (no root needed)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatekeeper.volumes.service import VolumeService
from softudc.pki import CertificateAuthority


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """tmp/tls/{server,h1,h3}: the server dir for qsd, client dirs in qemu/libnbd's layout."""
    ca = CertificateAuthority.create(tmp_path / "ca")
    root = tmp_path / "tls"
    server = ca.issue_server("h2", ["127.0.0.1"])
    (root / "server").mkdir(parents=True)
    for f, data in (("ca-cert.pem", ca.cert_pem), ("server-cert.pem", server.cert_pem),
                    ("server-key.pem", server.key_pem)):
        (root / "server" / f).write_bytes(data)
    for host in ("h1", "h3"):
        c = ca.issue_client(host)
        (root / host).mkdir()
        for f, data in (("ca-cert.pem", ca.cert_pem), ("client-cert.pem", c.cert_pem), ("client-key.pem", c.key_pem)):
            (root / host / f).write_bytes(data)
    return root


@pytest.fixture
def service(tmp_path: Path, certs: Path) -> Iterator[VolumeService]:
    svc = VolumeService(tmp_path / "pool", tmp_path / "run", certs / "server", "127.0.0.1", free_port())
    try:
        yield svc
    finally:
        for name in svc.exports.names():
            svc.exports.unexport(name)
