"""vnetd relay messages on UDP port 1798, message id 3 (DESIGN.md: "the original multicast IP
packet, authenticated, between configured peers").

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------------------------------+-------------------------------+
    |            id = 3             |  opcode: 1 PACKET, 2 HELLO    |
    +-------------------------------+-------------------------------+
    |            origin: IPv4 address of the vnetd that captured it |
    +---------------------------------------------------------------+
    |            sequence number at the origin (64)                 |
    +---------------+-----------------------------------------------+
    |     hops      |                reserved (0)                   |
    +---------------+-----------------------------------------------+
    |            key id (32)                                        |
    +---------------------------------------------------------------+
    |            timestamp, ns since the epoch (64)                 |
    +---------------------------------------------------------------+
    |  PACKET: the original IPv4 packet, as captured ...            |
    +---------------------------------------------------------------+
    |            truncated HMAC-SHA256 over everything above (128)  |
    +---------------------------------------------------------------+

(origin, sequence) names a captured packet exactly, so every vnetd drops the copies a mesh or a
triangle brings it, and a legitimate repeat (an ARP retry with identical bytes) is not mistaken
for one. The Xen original had neither, and no authentication (reference/xen-vnet.md §6.3 #14).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass

from softudc.wire.errors import WireError
from softudc.wire.header import MessageHeader, MsgId, build_header, parse_header

_FIXED = struct.Struct("!4sQB3xIQ")
HEADER_LEN = 4 + _FIXED.size  # 32
MAC_LEN = 16
MAX_HOPS = 16


class RelayOp(enum.IntEnum):
    PACKET = 1
    HELLO = 2


class RelayAuthError(WireError):
    """The MAC does not verify: wrong key or a tampered message."""


@dataclass(frozen=True, slots=True)
class RelayMessage:
    op: RelayOp
    origin: ipaddress.IPv4Address
    seq: int
    hops: int
    key_id: int
    timestamp_ns: int
    packet: bytes = b""


def build_relay(msg: RelayMessage, key: bytes) -> bytes:
    if not 0 <= msg.hops <= MAX_HOPS:
        raise WireError(f"relay: hops {msg.hops} out of range 0..{MAX_HOPS}")
    if msg.op is RelayOp.HELLO and msg.packet:
        raise WireError("relay: a HELLO carries no packet")
    if msg.op is RelayOp.PACKET and len(msg.packet) < 20:
        raise WireError("relay: a PACKET carries an IPv4 packet of at least 20 bytes")
    body = build_header(MessageHeader(MsgId.RELAY, msg.op)) + _FIXED.pack(
        msg.origin.packed, msg.seq, msg.hops, msg.key_id, msg.timestamp_ns) + msg.packet
    return body + hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


def parse_relay(buf: bytes, key: bytes) -> RelayMessage:
    """Parse and authenticate; WireError (RelayAuthError for a bad MAC) on anything wrong."""
    header = parse_header(buf)
    if header.id != MsgId.RELAY:
        raise WireError(f"relay: message id {int(header.id)}, expected {int(MsgId.RELAY)}")
    try:
        op = RelayOp(header.opcode)
    except ValueError:
        raise WireError(f"relay: unknown opcode {header.opcode}") from None
    if len(buf) < HEADER_LEN + MAC_LEN:
        raise WireError(f"relay: {len(buf)} bytes, need at least {HEADER_LEN + MAC_LEN}")
    body, mac = buf[:-MAC_LEN], buf[-MAC_LEN:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN], mac):
        raise RelayAuthError("relay: MAC does not verify (wrong key or tampered)")
    origin, seq, hops, key_id, ts = _FIXED.unpack_from(buf, 4)
    packet = bytes(body[HEADER_LEN:])
    if hops > MAX_HOPS:
        raise WireError(f"relay: hops {hops} exceeds {MAX_HOPS}")
    if op is RelayOp.PACKET and (len(packet) < 20 or packet[0] >> 4 != 4):
        raise WireError("relay: PACKET does not carry an IPv4 packet")
    if op is RelayOp.HELLO and packet:
        raise WireError("relay: HELLO with a payload")
    return RelayMessage(op, ipaddress.IPv4Address(origin), seq, hops, key_id, ts, packet)
