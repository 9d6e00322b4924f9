"""ESP (RFC 4303) in UDP (RFC 3948, port 4500) for secured VNETs, sans-IO.

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +---------------------------------------------------------------+
    |               Security Parameters Index (SPI)                 |  AAD: SPI,
    +---------------------------------------------------------------+  [ESN high],
    |                 Sequence Number (low 32 bits)                 |  seq low
    +---------------------------------------------------------------+
    |                  IV (8 bytes, explicit)                       |
    +---------------------------------------------------------------+
    |  EtherIP header (VNET id) + Ethernet frame  ...               |  encrypted (conf)
    +                 +---------------+---------------+-------------+  or only
    |                 | Padding 1,2,3…| Pad Length    | Next hdr=97 |  authenticated (auth)
    +-----------------+---------------+---------------+-------------+
    |                 ICV (16 bytes, GCM / GMAC tag)                |
    +---------------------------------------------------------------+

`conf`: AES-GCM, RFC 4106 (key = AES key, 4-byte salt; nonce = salt ‖ IV; AAD = SPI ‖ seq, or
SPI ‖ ESN-high ‖ seq-low with 64-bit extended sequence numbers, RFC 4106 §5).
`auth`: AES-GMAC, RFC 4543 §3 (ENCR_NULL_AUTH_AES_GMAC): nothing is encrypted; the tag covers
AAD ‖ IV ‖ payload ‖ padding ‖ pad length ‖ next header.
The IV is the 64-bit sequence number, which never repeats under one key (RFC 4106 §3.1).
Padding aligns the encrypted part to 4 bytes, with the monotonic 1, 2, 3… bytes of RFC 4303 §2.4.
SPI 0 is reserved for IKE on port 4500 (RFC 3948 §2.2) and 1-255 by IANA; we never use them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from softudc.wire.errors import WireError

ESP_PORT = 4500
NEXT_HEADER_ETHERIP = 97
HEADER_LEN = 8  # SPI + sequence
IV_LEN = 8
ICV_LEN = 16
SALT_LEN = 4
_HDR = struct.Struct("!II")

Level = Literal["auth", "conf"]


class AuthError(WireError):
    """The ICV did not verify: wrong key, tampered or foreign packet."""


@dataclass(frozen=True)
class EspKey:
    """One direction's keying material: an AES key (16 or 32 bytes) and a 4-byte salt."""

    level: Level
    key: bytes
    salt: bytes

    def __post_init__(self) -> None:
        if len(self.key) not in (16, 24, 32):
            raise ValueError(f"ESP key of {len(self.key)} bytes; AES needs 16, 24 or 32")
        if len(self.salt) != SALT_LEN:
            raise ValueError(f"ESP salt of {len(self.salt)} bytes; RFC 4106 needs {SALT_LEN}")
        if self.level not in ("auth", "conf"):
            raise ValueError(f"ESP level {self.level!r}; expected 'auth' or 'conf'")
        object.__setattr__(self, "_aead", AESGCM(self.key))

    @property
    def aead(self) -> AESGCM:
        return self.__dict__["_aead"]  # type: ignore[no-any-return]


def _aad(spi: int, seq: int, esn: bool) -> bytes:
    if esn:
        return struct.pack("!III", spi, seq >> 32, seq & 0xFFFFFFFF)
    return struct.pack("!II", spi, seq & 0xFFFFFFFF)


def padded_len(payload_len: int) -> int:
    """Payload + padding + pad length + next header, aligned to 4 bytes."""
    return (payload_len + 2 + 3) & ~3


def seal(key: EspKey, spi: int, seq: int, payload: bytes | memoryview, esn: bool = True) -> bytes:
    """Build one ESP packet (without the UDP header) carrying `payload` (EtherIP + frame)."""
    if spi < 256 or spi > 0xFFFFFFFF:
        raise WireError(f"esp: SPI {spi} is reserved or out of range")
    if not 0 <= seq < 1 << 64:
        raise WireError("esp: sequence number out of 64-bit range")
    n = padded_len(len(payload))
    pad = n - len(payload) - 2
    trailer = bytes(range(1, pad + 1)) + bytes((pad, NEXT_HEADER_ETHERIP))
    iv = seq.to_bytes(8, "big")
    nonce = key.salt + iv
    aad = _aad(spi, seq, esn)
    header = _HDR.pack(spi, seq & 0xFFFFFFFF)
    plain = bytes(payload) + trailer
    if key.level == "conf":
        return header + iv + key.aead.encrypt(nonce, plain, aad)
    return header + iv + plain + key.aead.encrypt(nonce, b"", aad + iv + plain)


@dataclass(frozen=True, slots=True)
class EspHeader:
    spi: int
    seq_low: int


def peek(buf: bytes | memoryview) -> EspHeader:
    """SPI and low sequence bits, to find the SA and check the replay window before any crypto."""
    if len(buf) < HEADER_LEN + IV_LEN + 4 + ICV_LEN:
        raise WireError(f"esp: {len(buf)} bytes is shorter than the smallest ESP packet")
    spi, seq_low = _HDR.unpack_from(buf)
    if spi < 256:
        raise WireError(f"esp: SPI {spi} is reserved (0 marks IKE on port 4500)")
    return EspHeader(spi, seq_low)


def open_(key: EspKey, buf: bytes | memoryview, seq: int, esn: bool = True) -> bytes:
    """Verify (and for `conf` decrypt) one ESP packet whose full 64-bit sequence number the
    replay window inferred; returns the payload (EtherIP + frame) without the trailer."""
    header = peek(buf)
    if header.seq_low != seq & 0xFFFFFFFF:
        raise WireError("esp: sequence number does not match the one inferred")
    iv = bytes(buf[HEADER_LEN:HEADER_LEN + IV_LEN])
    nonce = key.salt + iv
    aad = _aad(header.spi, seq, esn)
    body = buf[HEADER_LEN + IV_LEN:]
    try:
        if key.level == "conf":
            plain = key.aead.decrypt(nonce, bytes(body), aad)
        else:
            plain = bytes(body[:-ICV_LEN])
            key.aead.decrypt(nonce, bytes(body[-ICV_LEN:]), aad + iv + plain)
    except InvalidTag:
        raise AuthError("esp: ICV does not verify (wrong key, tampered or replayed under an old key)") from None
    if len(plain) < 2 or len(plain) % 4:
        raise WireError("esp: payload not aligned to 4 bytes")
    pad, next_header = plain[-2], plain[-1]
    if next_header != NEXT_HEADER_ETHERIP:
        raise WireError(f"esp: next header {next_header}, expected {NEXT_HEADER_ETHERIP} (EtherIP)")
    if pad + 2 > len(plain) or plain[-2 - pad:-2] != bytes(range(1, pad + 1)):
        raise WireError("esp: bad padding")
    return plain[:-2 - pad]
