"""A VNET frame carried over UDP port 1798 (DESIGN.md, "VNET frames").

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------------------------------+-------------------------------+
    |           id = 2              |      opcode = flags           |
    +-------+-----------------------+-------------------------------+
    |  ver 3|       VNET id         |  Ethernet frame (no FCS) ...  |
    +-------+-----------------------+-------------------------------+

Flags: bit 0 (CSUM_PARTIAL) says the inner TCP/UDP checksum holds only the pseudo-header sum.
It is allowed only between SoftUDC peers; unknown flag bits make the message invalid, so an older
receiver never mistakes an extension for a plain frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from softudc.wire.errors import WireError
from softudc.wire.etherip import ETHERIP_LEN, EtherIPHeader, build_etherip, parse_etherip
from softudc.wire.header import HEADER_LEN, MessageHeader, MsgId, build_header, parse_header

FLAG_CSUM_PARTIAL = 0x0001
KNOWN_FLAGS = FLAG_CSUM_PARTIAL
FRAME_PREFIX_LEN = HEADER_LEN + ETHERIP_LEN
ETH_HEADER_LEN = 14
MAX_FRAME_LEN = 65535 - 20 - 8 - FRAME_PREFIX_LEN  # what fits one IPv4 UDP datagram


@dataclass(frozen=True, slots=True)
class FrameMessage:
    vnet: int
    frame: bytes | memoryview
    flags: int = 0


def frame_prefix(vnet: int, flags: int = 0) -> bytes:
    """The 6 bytes in front of every frame of `vnet`; the forwarder pre-writes them once."""
    if flags & ~KNOWN_FLAGS:
        raise WireError(f"frame: unknown flags {flags:#06x}")
    return build_header(MessageHeader(MsgId.FRAME, flags)) + build_etherip(EtherIPHeader(vnet))


def build_frame_message(msg: FrameMessage) -> bytes:
    _check_frame_len(len(msg.frame))
    return frame_prefix(msg.vnet, msg.flags) + bytes(msg.frame)


def parse_frame_message(buf: bytes | memoryview) -> FrameMessage:
    header = parse_header(buf)
    if header.id != MsgId.FRAME:
        raise WireError(f"frame: message id {int(header.id)}, expected {int(MsgId.FRAME)}")
    if header.opcode & ~KNOWN_FLAGS:
        raise WireError(f"frame: unknown flags {header.opcode:#06x}")
    etherip = parse_etherip(buf, HEADER_LEN)
    if etherip.vnet == 0:
        raise WireError("frame: vnet id 0 is reserved for plain RFC 3378 over raw IP")
    _check_frame_len(len(buf) - FRAME_PREFIX_LEN)
    return FrameMessage(etherip.vnet, memoryview(buf)[FRAME_PREFIX_LEN:], header.opcode)


def _check_frame_len(n: int) -> None:
    if n < ETH_HEADER_LEN:
        raise WireError(f"frame: Ethernet frame of {n} bytes, need at least {ETH_HEADER_LEN}")
    if n > MAX_FRAME_LEN:
        raise WireError(f"frame: Ethernet frame of {n} bytes exceeds {MAX_FRAME_LEN}")


def peek_frame(buf: bytes | bytearray | memoryview, n: int) -> tuple[int, int]:
    """Hot-path check of a received datagram of `n` bytes known to start with id 2.

    Returns (vnet, flags); the frame is buf[FRAME_PREFIX_LEN:n]. Same rules as
    `parse_frame_message`, without building objects.
    """
    if n < FRAME_PREFIX_LEN + ETH_HEADER_LEN:
        raise WireError(f"frame: datagram of {n} bytes is shorter than prefix + Ethernet header")
    flags = (buf[2] << 8) | buf[3]
    if flags & ~KNOWN_FLAGS:
        raise WireError(f"frame: unknown flags {flags:#06x}")
    if buf[4] >> 4 != 3:
        raise WireError(f"etherip: version {buf[4] >> 4}, expected 3")
    vnet = ((buf[4] & 0x0F) << 8) | buf[5]
    if vnet == 0 or vnet > 4094:
        raise WireError(f"frame: vnet id {vnet} out of range 1..4094")
    return vnet, flags
