"""Sans-IO codecs for SoftUDC's wire formats: bytes in, dataclasses out, and back.

Nothing in this package opens a socket, logs or awaits; the daemons do that around it.
"""

from softudc.wire.errors import WireError
from softudc.wire.etherip import (
    ETHERIP_PROTO,
    EtherIPHeader,
    build_etherip,
    parse_etherip,
)
from softudc.wire.header import (
    VNET_PORT,
    MessageHeader,
    MsgId,
    build_header,
    parse_header,
)
from softudc.wire.udpframe import (
    FRAME_PREFIX_LEN,
    FrameMessage,
    build_frame_message,
    frame_prefix,
    parse_frame_message,
)
from softudc.wire.varp import (
    VARP_GROUP,
    VarpMessage,
    VarpOp,
    VarpTrailer,
    build_varp,
    parse_varp,
)

__all__ = [
    "ETHERIP_PROTO",
    "FRAME_PREFIX_LEN",
    "VARP_GROUP",
    "VNET_PORT",
    "EtherIPHeader",
    "FrameMessage",
    "MessageHeader",
    "MsgId",
    "VarpMessage",
    "VarpOp",
    "VarpTrailer",
    "WireError",
    "build_etherip",
    "build_frame_message",
    "build_header",
    "build_varp",
    "frame_prefix",
    "parse_etherip",
    "parse_frame_message",
    "parse_header",
    "parse_varp",
]
