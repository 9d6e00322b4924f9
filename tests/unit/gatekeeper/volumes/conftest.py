"""Real qemu-storage-daemons on loopback, join certificates from a real SoftUDC CA (no root needed)."""

from __future__ import annotations

import random
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gatekeeper.volumes.service import VolumeService
from softudc.pki import CertificateAuthority, write_nbd_tls_dir


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 8) -> int:
    """A base port with `span` free ports from it, below the kernel's ephemeral range (32768 up):
    an ephemeral port freed by a stopped export may be taken meanwhile by any client connection
    (the other test worker's), and the test's restart on that port would fail (seen in CI)."""
    for _ in range(200):
        base = random.randrange(20000, 32000)
        if all(_free(base + i) for i in range(span)):
            return base
    raise RuntimeError("no 8 free ports between 20000 and 32000 on 127.0.0.1")


def join_tls_dir(ca: CertificateAuthority, host: str, address: str, directory: Path) -> None:
    """What a host does at join: its own key, a CSR, the certificate the join signs (with its
    address: both ends), written in QEMU's layout."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "asked")])).sign(key, hashes.SHA256()))
    token = ca.create_join_token(host)
    _, cert = ca.join(token, csr.public_bytes(serialization.Encoding.PEM), addresses=[address])
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_nbd_tls_dir(directory, ca.cert_pem, cert, key_pem)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """tmp/tls/{server,h1,h3}: every host's join certificate in QEMU/libnbd's layout; `server`
    is h2's (it serves the exports with the certificate it got when it joined)."""
    ca = CertificateAuthority.create(tmp_path / "ca")
    root = tmp_path / "tls"
    join_tls_dir(ca, "h2", "127.0.0.1", root / "server")
    for host in ("h1", "h3"):
        join_tls_dir(ca, host, "127.0.0.1", root / host)
    return root


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short run directory: QMP sockets live there, and a Unix socket's path has at most 107
    bytes (pytest-xdist's tmp_path, with a long volume id, is longer)."""
    made = Path(tempfile.mkdtemp(prefix="sudcq"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def service(tmp_path: Path, certs: Path, run_dir: Path) -> Iterator[VolumeService]:
    svc = VolumeService(tmp_path / "pool", run_dir, certs / "server", "127.0.0.1", free_port())
    try:
        yield svc
    finally:
        for name in svc.exports.names():
            svc.exports.unexport(name)
