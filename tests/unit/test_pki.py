"""The CA: certificates that a real TLS stack accepts for mutual TLS, and refuses otherwise."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from softudc.pki import CertificateAuthority, Issued, PkiError


def _files(tmp: Path, name: str, issued: Issued) -> tuple[str, str]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    return str(cert), str(key)


def _handshake(tmp: Path, ca: CertificateAuthority, client: Issued | None) -> str:
    """A TLS server on loopback that requires a client certificate from `ca`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_files(tmp, "server", ca.issue_server("manager", ["127.0.0.1"])))
    server_ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else "?"
                result.append(f"ok:{cn}")
                tls.sendall(b"x")
        except (ssl.SSLError, OSError) as e:
            result.append(f"refused:{type(e).__name__}")

    t = threading.Thread(target=serve)
    t.start()
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    if client is not None:
        client_ctx.load_cert_chain(*_files(tmp, "client", client))
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    t.join(5)
    listener.close()
    return result[0]


def test_mutual_tls_accepts_our_gatekeepers_only(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    assert _handshake(tmp_path, ca, ca.issue_client("h1")) == "ok:h1"
    assert _handshake(tmp_path, ca, None).startswith("refused")
    stranger = CertificateAuthority.create(tmp_path / "other")
    assert _handshake(tmp_path, ca, stranger.issue_client("h1")).startswith("refused")


def test_join_tokens_are_one_time_and_stored_hashed(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    token = ca.create_join_token("h2")
    assert token not in (tmp_path / "tokens.json").read_text()
    assert ca.redeem_join_token(token) == "h2"
    with pytest.raises(PkiError, match="already used"):
        ca.redeem_join_token(token)
    expired = ca.create_join_token("h3", ttl=-1)
    with pytest.raises(PkiError, match="expired"):
        ca.redeem_join_token(expired)


def test_a_csr_gets_the_tokens_name_not_its_own(tmp_path: Path) -> None:
    ca = CertificateAuthority.load(CertificateAuthority.create(tmp_path).directory)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")])).sign(key, hashes.SHA256()))
    cert = x509.load_pem_x509_certificate(ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), "h7"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "h7"
    cert.verify_directly_issued_by(ca.cert)
    assert oct((tmp_path / "ca.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(PkiError, match="already holds a CA"):
        CertificateAuthority.create(tmp_path)
