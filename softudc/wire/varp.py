"""VARP, the Virtual Address Resolution Protocol: which host holds (VNET, MAC) now?

The body is Xen vnet G2/G3's 43-byte VarpHdr (reference/xen-vnet.md §2.3), behind the common
message header with id 1, followed by SoftUDC's optional authentication trailer:

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------------------------------+-------------------------------+
    |            id = 1             |  opcode (1 REQUEST, 2 ANNOUNCE)|
    +-------------------------------+-------------------------------+
    |                  VNET id, 128 bits, big-endian                |
    |                              ...                              |
    +---------------------------------------------------------------+
    |                       MAC (6 bytes)           |   family      |
    +-----------------------------------------------+---------------+
    |   address, 16 bytes (IPv4 in the first 4, the rest zero)      |
    +---------------------------------------------------------------+  43 bytes
    |                          key id (32)                          |  trailer, 28 bytes
    |                    timestamp, ns since epoch (64)             |
    |              truncated HMAC-SHA256 (128)                      |
    +---------------------------------------------------------------+

A REQUEST carries the requester's address (receivers ignore it); an ANNOUNCE, as a reply or
gratuitously, carries the care-of address of the MAC. The trailer's verification belongs to the
secure-VNET work; here it is only carried.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from softudc.wire.errors import WireError
from softudc.wire.header import HEADER_LEN, MessageHeader, MsgId, build_header, parse_header

VARP_GROUP = "224.10.0.1"
VARP_LEN = 43
TRAILER_LEN = 28
AF_INET = 2
AF_INET6 = 10
_BODY = struct.Struct("!16s6sB16s")
_TRAILER = struct.Struct("!IQ16s")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class VarpOp(enum.IntEnum):
    REQUEST = 1
    ANNOUNCE = 2


@dataclass(frozen=True, slots=True)
class VarpTrailer:
    key_id: int
    timestamp_ns: int
    mac: bytes  # 16 bytes of HMAC-SHA256


@dataclass(frozen=True, slots=True)
class VarpMessage:
    op: VarpOp
    vnet: int
    vmac: bytes
    addr: Address
    trailer: VarpTrailer | None = None


def parse_varp(buf: bytes | memoryview) -> VarpMessage:
    header = parse_header(buf)
    if header.id != MsgId.VARP:
        raise WireError(f"varp: message id {int(header.id)}, expected {int(MsgId.VARP)}")
    try:
        op = VarpOp(header.opcode)
    except ValueError:
        raise WireError(f"varp: unknown opcode {header.opcode}") from None
    if len(buf) not in (VARP_LEN, VARP_LEN + TRAILER_LEN):
        raise WireError(
            f"varp: {len(buf)} bytes, expected {VARP_LEN} or {VARP_LEN + TRAILER_LEN} (with trailer)"
        )
    vnet_raw, vmac, family, addr_raw = _BODY.unpack_from(buf, HEADER_LEN)
    addr: Address
    if family == AF_INET:
        if any(addr_raw[4:]):
            raise WireError("varp: IPv4 address with non-zero padding")
        addr = ipaddress.IPv4Address(addr_raw[:4])
    elif family == AF_INET6:
        addr = ipaddress.IPv6Address(addr_raw)
    else:
        raise WireError(f"varp: address family {family}, expected {AF_INET} or {AF_INET6}")
    trailer = None
    if len(buf) == VARP_LEN + TRAILER_LEN:
        key_id, ts, mac = _TRAILER.unpack_from(buf, VARP_LEN)
        trailer = VarpTrailer(key_id, ts, mac)
    return VarpMessage(op, int.from_bytes(vnet_raw, "big"), bytes(vmac), addr, trailer)


def build_varp(msg: VarpMessage) -> bytes:
    if len(msg.vmac) != 6:
        raise WireError(f"varp: MAC of {len(msg.vmac)} bytes, need 6")
    if not 0 <= msg.vnet < 1 << 128:
        raise WireError("varp: vnet id out of 128-bit range")
    if isinstance(msg.addr, ipaddress.IPv4Address):
        family, addr_raw = AF_INET, msg.addr.packed + bytes(12)
    else:
        family, addr_raw = AF_INET6, msg.addr.packed
    out = build_header(MessageHeader(MsgId.VARP, msg.op)) + _BODY.pack(
        msg.vnet.to_bytes(16, "big"), msg.vmac, family, addr_raw
    )
    if msg.trailer is not None:
        t = msg.trailer
        if len(t.mac) != 16 or not 0 <= t.key_id < 1 << 32 or not 0 <= t.timestamp_ns < 1 << 64:
            raise WireError("varp: trailer fields out of range (key id 32 bits, ts 64, mac 16 B)")
        out += _TRAILER.pack(t.key_id, t.timestamp_ns, t.mac)
    return out
