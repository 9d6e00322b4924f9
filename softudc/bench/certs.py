"""Throw-away certificates for benchmark peers: self-signed ones (OpenVPN's --peer-fingerprint mode)
and client certificates from a manager's CA for simulated gatekeepers."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from softudc.pki import CertificateAuthority, fingerprint


def self_signed(directory: Path, name: str) -> tuple[Path, Path, str]:
    """Write NAME.crt and NAME.key; return their paths and the SHA-256 fingerprint (AA:BB:...)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem, cert.fingerprint(hashes.SHA256()).hex(":").upper()


def host_certificates(ca: CertificateAuthority, names: list[str], directory: Path) -> dict[str, tuple[Path, str]]:
    """A client certificate from the manager's CA for each simulated host, as a gatekeeper gets
    at its join: NAME.pem (certificate and key, 0600) in `directory`; name -> (path, fingerprint)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        issued = ca.issue_client(name)
        path = directory / f"{name}.pem"
        path.touch(0o600)
        path.write_bytes(issued.cert_pem + issued.key_pem)
        out[name] = (path, fingerprint(issued.cert_pem))
    return out
