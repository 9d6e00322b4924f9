"""The CA: certificates that a real TLS stack accepts for mutual TLS, and refuses otherwise."""

from __future__ import annotations

import functools
import json
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from softudc.pki import (
    MAX_ADDRESSES,
    NBD_TLS_FILES,
    CertificateAuthority,
    Issued,
    PkiError,
    certificate_addresses,
    server_addresses,
    write_nbd_tls_dir,
)


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
                cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else "?"  # type: ignore[misc]
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


def _race(n: int, fn: Callable[[], object]) -> list[object]:
    """Run `fn` on `n` threads released at once; each result or the exception it raised."""
    start = threading.Barrier(n)
    results: list[object] = []

    def one() -> None:
        start.wait()
        try:
            results.append(fn())
        except Exception as e:
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


@pytest.mark.adversarial
def test_r15_concurrent_joins_with_one_token_redeem_it_exactly_once(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    for _ in range(5):
        ca.create_join_token("other")  # the file holds more than the token raced for
    for trial in range(50):
        token = ca.create_join_token(f"h{trial}")
        results = _race(6, functools.partial(ca.redeem_join_token, token))
        assert sum(r == f"h{trial}" for r in results) == 1, (trial, results)
        assert all(isinstance(r, PkiError) for r in results if r != f"h{trial}"), results
    assert len(json.loads((tmp_path / "tokens.json").read_text())) == 5  # the others are all still there


@pytest.mark.adversarial
def test_r15_readers_never_see_a_torn_tokens_file(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    ca.create_join_token("seed")
    stop = threading.Event()
    torn: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            text = (tmp_path / "tokens.json").read_text()
            reads[0] += 1
            try:
                json.loads(text)
            except ValueError:
                torn.append(text)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(200):
            token = ca.create_join_token(f"h{i}")
            if i % 2:
                ca.redeem_join_token(token)
    finally:
        stop.set()
        for t in readers:
            t.join(10)
    assert reads[0] > 0 and torn == []
    assert oct((tmp_path / "tokens.json").stat().st_mode & 0o777) == "0o600"


def test_r15_an_unknown_token_does_not_rewrite_the_tokens_file(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    ca.create_join_token("h1")
    before = (tmp_path / "tokens.json").stat()
    for _ in range(20):
        with pytest.raises(PkiError, match="unknown or already used"):
            ca.redeem_join_token("guess")
    after = (tmp_path / "tokens.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_r15_a_bad_csr_does_not_spend_the_token(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    token = ca.create_join_token("h1")
    with pytest.raises(ValueError):
        ca.join(token, b"-----BEGIN CERTIFICATE REQUEST-----\nnot one\n-----END CERTIFICATE REQUEST-----\n")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])).sign(key, hashes.SHA256()))
    host, cert = ca.join(token, csr.public_bytes(serialization.Encoding.PEM))
    assert host == "h1" and x509.load_pem_x509_certificate(cert).subject.rfc4514_string() == "CN=h1"


def test_r22_the_ca_directory_is_0700_and_its_key_was_created_exclusively(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    assert oct((tmp_path / "pki").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "pki" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert ca.key.public_key() == CertificateAuthority.load(tmp_path / "pki").key.public_key()


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM))


def _usages(cert_pem: bytes) -> set[x509.ObjectIdentifier]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_a_join_naming_addresses_gets_one_certificate_for_both_ends(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    host, cert = ca.join(ca.create_join_token("h2"), _csr(), addresses=["10.100.0.3", "fd00::3"])
    assert host == "h2" and certificate_addresses(cert) == ["10.100.0.3", "fd00::3"]
    assert _usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    _, old_style = ca.join(ca.create_join_token("h3"), _csr())  # an old gatekeeper names none: as before
    assert certificate_addresses(old_style) == [] and _usages(old_style) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(PkiError, match="no IP address"):
        write_nbd_tls_dir(tmp_path / "nbd", ca.cert_pem, old_style, b"key")
    assert not (tmp_path / "nbd").exists()
    write_nbd_tls_dir(tmp_path / "nbd", ca.cert_pem, cert, b"key")
    assert sorted(p.name for p in (tmp_path / "nbd").iterdir()) == sorted(NBD_TLS_FILES)
    assert oct((tmp_path / "nbd" / "server-key.pem").stat().st_mode & 0o777) == "0o600"


@given(st.lists(st.text(max_size=20), max_size=6))
def test_bad_addresses_are_refused_before_the_token_is_spent(addresses: list[str]) -> None:
    try:
        ok = server_addresses(addresses)
    except PkiError as e:
        assert "addresses" in str(e)
        return
    assert len(ok) == len(set(ok)) <= MAX_ADDRESSES


def test_a_bad_address_does_not_spend_the_token(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    token = ca.create_join_token("h1")
    for bad in (["10.0.0.300"], ["224.0.0.1"], ["0.0.0.0"], ["10.0.0.1", "10.0.0.1"], ["10.0.0.1"] * 5):
        with pytest.raises(PkiError, match=r"addresses"):
            ca.join(token, _csr(), addresses=bad)
    assert ca.join(token, _csr(), addresses=["10.0.0.1"])[0] == "h1"
