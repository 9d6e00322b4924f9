"""EtherIP header, RFC 3378 §3, with SoftUDC's VNET id in the reserved bits.

     0                   1
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
    +-------+-----------------------+
    |VERSION|   VNET id (RESERVED)  |
    +-------+-----------------------+

VERSION is 3. RFC 3378 calls bits 4-15 RESERVED and requires zero; SoftUDC carries the VNET id
(1..4094) there. VNET id 0 is therefore plain RFC 3378, which OpenBSD etherip(4) and Wireshark
read. The header is a 16-bit word in network byte order (the Xen original used a host-endian C
bitfield and interoperated with nobody: reference/xen-vnet.md §1.2). The Ethernet frame (no FCS)
follows. Over raw IPv4 the outer protocol number is 97.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from softudc.wire.errors import WireError

ETHERIP_PROTO = 97
ETHERIP_VERSION = 3
ETHERIP_LEN = 2
MAX_VNET_ID = 4094
_WORD = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class EtherIPHeader:
    vnet: int
    version: int = ETHERIP_VERSION


def parse_etherip(buf: bytes | memoryview, offset: int = 0) -> EtherIPHeader:
    """Parse the 2-byte header at `offset`; the Ethernet frame starts at offset + 2."""
    if len(buf) - offset < ETHERIP_LEN:
        raise WireError(f"etherip: {len(buf) - offset} bytes, need {ETHERIP_LEN}")
    (word,) = _WORD.unpack_from(buf, offset)
    version = word >> 12
    if version != ETHERIP_VERSION:
        raise WireError(f"etherip: version {version}, expected {ETHERIP_VERSION}")
    vnet = word & 0x0FFF
    if vnet > MAX_VNET_ID:
        raise WireError(f"etherip: vnet id {vnet} out of range 0..{MAX_VNET_ID}")
    return EtherIPHeader(vnet)


def build_etherip(header: EtherIPHeader) -> bytes:
    if header.version != ETHERIP_VERSION:
        raise WireError(f"etherip: version {header.version}, only {ETHERIP_VERSION} exists")
    if not 0 <= header.vnet <= MAX_VNET_ID:
        raise WireError(f"etherip: vnet id {header.vnet} out of range 0..{MAX_VNET_ID}")
    return _WORD.pack((ETHERIP_VERSION << 12) | header.vnet)
