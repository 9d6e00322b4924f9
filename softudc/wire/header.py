"""The 4-byte message header that starts every datagram on UDP port 1798 (DESIGN.md, "Wire").

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------------------------------+-------------------------------+
    |              id               |            opcode             |
    +-------------------------------+-------------------------------+

id 1 = VARP, 2 = frame, 3 = vnetd relay, as Xen vnet's VnetMsgHdr (reference/xen-vnet.md §2.2).
For frames the opcode carries flags (see `udpframe`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from softudc.wire.errors import WireError

VNET_PORT = 1798
HEADER_LEN = 4
_HEADER = struct.Struct("!HH")


class MsgId(enum.IntEnum):
    VARP = 1
    FRAME = 2
    RELAY = 3


@dataclass(frozen=True, slots=True)
class MessageHeader:
    id: MsgId
    opcode: int


def parse_header(buf: bytes | memoryview) -> MessageHeader:
    if len(buf) < HEADER_LEN:
        raise WireError(f"message header: {len(buf)} bytes, need {HEADER_LEN}")
    raw_id, opcode = _HEADER.unpack_from(buf)
    try:
        msg_id = MsgId(raw_id)
    except ValueError:
        raise WireError(f"message header: unknown id {raw_id}") from None
    return MessageHeader(msg_id, opcode)


def build_header(header: MessageHeader) -> bytes:
    if not 0 <= header.opcode <= 0xFFFF:
        raise WireError(f"message header: opcode {header.opcode} out of range 0..65535")
    return _HEADER.pack(header.id, header.opcode)
