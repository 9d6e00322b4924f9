"""The manager's certificate authority: `softudc init` creates it; gatekeepers join with a
one-time token and get a client certificate; manager <-> gatekeeper traffic is mutual TLS only.
A gatekeeper that names its underlay addresses when it joins gets one certificate for both ends
(clientAuth + serverAuth, SAN = its name and those addresses): it also serves its volumes over
NBD+TLS with it (gatekeeper/volumes). One that names none gets a client certificate, as before.

Files in the PKI directory (0700): ca.crt, ca.key (0600, created exclusively), tokens.json (0600;
only SHA-256 digests of tokens, never the tokens themselves). tokens.json is changed under a lock
and replaced atomically (`softudc.atomicfile`), so concurrent joins redeem a token once and readers
never see half a file.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from softudc.atomicfile import create_exclusive, locked, private_dir, write_atomic

CA_DAYS = 3650
LEAF_DAYS = 365


class PkiError(RuntimeError):
    """A PKI operation that cannot be done; the message says what to do."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of a certificate's DER form, hex: what the manager binds a host name to."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes


MAX_ADDRESSES = 4


def server_addresses(addresses: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses a joining host asks its certificate to serve on: unicast IPs, at most
    MAX_ADDRESSES, no repeats. PkiError naming the bad one otherwise."""
    if len(addresses) > MAX_ADDRESSES:
        raise PkiError(f"addresses: {len(addresses)} given, at most {MAX_ADDRESSES}; "
                       "send the host's underlay addresses")
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for i, text in enumerate(addresses):
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise PkiError(f"addresses[{i}]: {text!r} is not an IP address") from None
        if ip.is_multicast or ip.is_unspecified or ip in out:
            raise PkiError(f"addresses[{i}]: {text} cannot be served on (multicast, unspecified "
                           "or repeated); send the host's underlay addresses")
        out.append(ip)
    return out


def certificate_addresses(cert_pem: bytes) -> list[str]:
    """The IP addresses a certificate serves on (its SAN), empty for a client-only one."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(a) for a in san.get_values_for_type(x509.IPAddress)]


class CertificateAuthority:
    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, directory: Path, name: str = "SoftUDC CA") -> CertificateAuthority:
        private_dir(directory)
        if (directory / "ca.key").exists():
            raise PkiError(f"{directory} already holds a CA; remove it first if you really mean to replace it "
                           "(every gatekeeper would have to join again)")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(minutes=5))
                .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        create_exclusive(directory / "ca.key", _key_pem(key))
        write_atomic(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        except FileNotFoundError:
            raise PkiError(f"no CA in {directory}; create one with `softudc init`") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{directory}/ca.key is not an EC key")
        return cls(directory, cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _leaf(self, common_name: str, usage: x509.ObjectIdentifier | list[x509.ObjectIdentifier],
              public_key: ec.EllipticCurvePublicKey, sans: list[x509.GeneralName]) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(_now() - datetime.timedelta(minutes=5))
                   .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_server(self, name: str, addresses: list[str]) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(name)]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        cert = self._leaf(name, ExtendedKeyUsageOID.SERVER_AUTH, key.public_key(), sans)
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_client(self, name: str) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(name, ExtendedKeyUsageOID.CLIENT_AUTH, key.public_key(), [])
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @staticmethod
    def check_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
        """A certificate request we would sign: PEM, self-signed correctly, an EC key.
        ValueError if it is not a PEM request at all, PkiError if we refuse it."""
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise PkiError("the certificate request's signature does not verify; make a new one")
        if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
            raise PkiError("only EC keys are accepted; make the request with an EC (P-256) key")
        return csr

    def sign_csr(self, csr_pem: bytes, name: str, addresses: Sequence[str] = ()) -> bytes:
        """A gatekeeper keeps its key: it sends a CSR with its join token; the name is the
        token's, never the one the CSR asks for. With `addresses` (the host's underlay addresses)
        the certificate also serves: serverAuth, SAN = DNS name + those IPs (NBD exports)."""
        public = self.check_csr(csr_pem).public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        ips = server_addresses(addresses)
        if not ips:
            client = self._leaf(name, ExtendedKeyUsageOID.CLIENT_AUTH, public, [])
            return client.public_bytes(serialization.Encoding.PEM)
        sans: list[x509.GeneralName] = [x509.DNSName(name), *(x509.IPAddress(a) for a in ips)]
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        return self._leaf(name, usages, public, sans).public_bytes(serialization.Encoding.PEM)

    def join(self, token: str, csr_pem: bytes, redeem: Callable[[str], str] | None = None,
             addresses: Sequence[str] = ()) -> tuple[str, bytes]:
        """A host joins: (its name, its new certificate). The request and the addresses are
        checked before the token is spent, so a broken CSR does not cost the operator a new token.
        `redeem` spends the token (default: this directory's tokens.json; the manager passes one
        that asks its store first)."""
        self.check_csr(csr_pem)
        server_addresses(addresses)
        host = (redeem or self.redeem_join_token)(token)
        return host, self.sign_csr(csr_pem, host, addresses)

    # --- one-time join tokens -----------------------------------------------------------------

    @property
    def _tokens_path(self) -> Path:
        return self.directory / "tokens.json"

    def _tokens(self) -> dict[str, dict[str, object]]:
        try:
            data: dict[str, dict[str, object]] = json.loads(self._tokens_path.read_text())
            return data
        except FileNotFoundError:
            return {}

    def _save_tokens(self, tokens: dict[str, dict[str, object]]) -> None:
        write_atomic(self._tokens_path, json.dumps(tokens, indent=1).encode())

    def create_join_token(self, host: str, ttl: float = 3600.0) -> str:
        token = secrets.token_urlsafe(32)
        with locked(self._tokens_path):
            tokens = self._tokens()
            tokens[hashlib.sha256(token.encode()).hexdigest()] = {"host": host, "expires": time.time() + ttl}
            self._save_tokens(tokens)
        return token

    def redeem_join_token(self, token: str) -> str:
        """The host the token was made for; the token is gone afterwards (one time only: the
        read, the removal and the write happen under one lock, so two joins cannot both win)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        with locked(self._tokens_path):
            tokens = self._tokens()
            entry = tokens.pop(digest, None)
            if entry is None:  # nothing changes: an unknown token never rewrites the file
                raise PkiError("unknown or already used join token; create a new one with `softudc host join-token`")
            now = time.time()
            self._save_tokens({k: v for k, v in tokens.items() if float(v["expires"]) > now})  # type: ignore[arg-type]
        if float(entry["expires"]) < time.time():  # type: ignore[arg-type]
            raise PkiError("the join token has expired; create a new one")
        return str(entry["host"])


NBD_TLS_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")


def write_nbd_tls_dir(directory: Path, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
    """QEMU's tls-creds-x509 layout from a host's join certificate (both ends: it serves its
    exports and reads others' with the same key): `[volumes] tls_dir`. Refuses a client-only
    certificate, which NBD clients would reject at the handshake."""
    if not certificate_addresses(cert_pem):
        raise PkiError("the host's certificate has no IP address (it was issued for a client only): join again "
                       "naming the underlay address so its exports can be served")
    private_dir(directory)
    for name, data, mode in zip(NBD_TLS_FILES, (ca_pem, cert_pem, key_pem, cert_pem, key_pem),
                                (0o644, 0o644, 0o600, 0o644, 0o600), strict=True):
        write_atomic(directory / name, data, mode)
