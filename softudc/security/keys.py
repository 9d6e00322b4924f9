"""Per-VNET keys: a master secret per (VNET, epoch), from which every SA and the VARP key derive.

Keys are never hard-wired (the Xen original used the same two ASCII keys everywhere). The
gatekeeper gets master secrets from a keys file now and from the manager later, both through
`KeyRing.set`. Each sending host has its own ESP key per (VNET, epoch), derived with HKDF from
the master secret and its underlay address, so two hosts never use one GCM key and their
sequence-number IVs can never collide. Receivers derive the sender's key from the outer source
address; a host without the master secret can neither read nor forge.

SPI = 0x10000000 | vnet << 16 | epoch (never below 256, RFC 4303 §2.1), so the SPI alone names the
(VNET, epoch) and rotation is a new epoch that overlaps the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from softudc.wire.esp import EspKey, Level

SPI_BASE = 0x10000000
VARP_MAC_LEN = 16


def spi_for(vnet: int, epoch: int) -> int:
    if not 1 <= vnet <= 4094 or not 0 <= epoch <= 0xFFFF:
        raise ValueError(f"vnet {vnet} / epoch {epoch} out of range (1..4094 / 0..65535)")
    return SPI_BASE | vnet << 16 | epoch


def parse_spi(spi: int) -> tuple[int, int]:
    """(vnet, epoch) for an SPI of ours; ValueError for anything else."""
    if spi & 0xF0000000 != SPI_BASE:
        raise ValueError(f"SPI {spi:#010x} is not a SoftUDC SPI")
    return (spi >> 16) & 0x0FFF, spi & 0xFFFF


def _hkdf(master: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


def derive_esp_key(master: bytes, vnet: int, epoch: int, sender: str, level: Level) -> EspKey:
    info = b"softudc esp v1" + struct.pack("!HH", vnet, epoch) + ipaddress.ip_address(sender).packed + level.encode()
    material = _hkdf(master, info, 36)
    return EspKey(level, material[:32], material[32:])


def derive_varp_key(master: bytes, vnet: int, epoch: int) -> bytes:
    return _hkdf(master, b"softudc varp v1" + struct.pack("!HH", vnet, epoch), 32)


def varp_mac(key: bytes, message: bytes, key_id: int, timestamp_ns: int) -> bytes:
    """Truncated HMAC-SHA256 over the 43-byte VARP message, the key id and the timestamp."""
    data = message + struct.pack("!IQ", key_id, timestamp_ns)
    return hmac.new(key, data, hashlib.sha256).digest()[:VARP_MAC_LEN]


@dataclass
class VnetKeys:
    """The master secrets one VNET has, by epoch, and the epoch this host sends with."""

    level: Level | None  # None: security "none" (keys may still authenticate VARP)
    secrets: dict[int, bytes] = field(default_factory=dict)
    send_epoch: int | None = None

    def validate(self, vnet: int) -> None:
        for epoch, secret in self.secrets.items():
            spi_for(vnet, epoch)
            if len(secret) < 16:
                raise ValueError(f"vnet {vnet} epoch {epoch}: secret of {len(secret)} bytes, need at least 16")
        if self.send_epoch is not None and self.send_epoch not in self.secrets:
            raise ValueError(f"vnet {vnet}: send epoch {self.send_epoch} has no secret")
        if self.level is not None and self.send_epoch is None:
            raise ValueError(f"vnet {vnet}: security {self.level} needs a send epoch")

    def fingerprint(self) -> str:
        return keys_fingerprint(self.level, self.secrets, self.send_epoch)


def secret_fingerprint(level: Level | None, secret: bytes) -> bytes:
    """Names one epoch's (level, secret) without revealing it: SAs derived from it are rebuilt
    when it changes, even under the same epoch number (audit R7)."""
    return hashlib.sha256(b"softudc secret v1" + (level or "none").encode() + secret).digest()[:16]


def keys_fingerprint(level: str | None, secrets: dict[int, bytes], send_epoch: int | None) -> str:
    """One VNET's whole key state (level, epochs, secrets, send epoch) as a short hex string: the
    gatekeeper shows it, and converge compares it with what the manager wants (audit R21)."""
    h = hashlib.sha256(b"softudc keys v1" + (level or "none").encode())
    h.update(struct.pack("!i", -1 if send_epoch is None else send_epoch))
    for epoch in sorted(secrets):
        h.update(struct.pack("!HH", epoch, len(secrets[epoch])) + secrets[epoch])
    return h.hexdigest()[:16]
