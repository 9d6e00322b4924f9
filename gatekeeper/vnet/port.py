"""A VNET as the data plane sees it, the constants of its buffers, and what it may ask the
control plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from softudc.wire.udpframe import FLAG_CSUM_PARTIAL, FRAME_PREFIX_LEN, frame_prefix

BATCH = 64
BUF_SIZE = 65536 + 64
IP_PMTUDISC_DO = 2
IP_MTU_DISCOVER = 10
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_GSO_SEGMENTS = 64
MAX_UDP_PAYLOAD = 65507
# Received datagrams land at RX_OFF, so a virtio header fits in front of the frame.
RX_OFF = 16
MAX_BATCH = 64
MIN_BATCH_STRIDE = 512  # small datagrams (ACKs, VARP) are not worth batching
RX_BUF_SIZE = RX_OFF + MAX_BATCH * 1600 + BUF_SIZE
# Raw transport: the outer IPv4 header (20 bytes, no options) and the EtherIP header come first.
RAW_PREFIX_LEN = 22
# Outer total length, id and checksum may differ between the packets of one batch.
RAW_PREFIX_MASK = bytes([0xFF, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0] + [0xFF] * 10)


class ControlPlane(Protocol):
    """What the forwarding threads call into for anything that is not a plain forward."""

    def on_miss(self, vnet: int, mac: bytes, frame: bytes) -> None: ...
    def on_stale(self, vnet: int, mac: bytes) -> None: ...
    def on_learn(self, vnet: int, mac: bytes, addr: str) -> None: ...
    def on_varp(self, buf: bytes, src: str) -> None: ...


@dataclass
class VnetPort:
    vnet: int
    fd: int
    transport: str  # "udp" | "raw"
    mtu: int
    members: tuple[str, ...] = ()
    offload: bool = False  # the TAP carries a virtio_net_hdr
    security: str = "none"  # none | auth | conf: conf and auth travel as ESP on UDP 4500
    prefix: bytes = b""
    prefix_partial: bytes = b""
    # tx_frames, tx_bytes, rx_frames, rx_bytes, flooded, tx_datagrams, rx_datagrams, tx_superframes, rx_superframes
    stats: list[int] = field(default_factory=lambda: [0] * 9)

    def __post_init__(self) -> None:
        self.prefix = frame_prefix(self.vnet)
        self.prefix_partial = frame_prefix(self.vnet, FLAG_CSUM_PARTIAL)

    def count_sent(self, packets: int, nbytes: int) -> None:
        """`packets` left for the underlay, carrying `nbytes` of frames (tx_frames, tx_bytes, tx_datagrams)."""
        stats = self.stats
        stats[0] += packets
        stats[1] += nbytes
        stats[5] += packets

    @property
    def secure(self) -> bool:
        return self.security != "none"

    @property
    def max_frame(self) -> int:
        return self.mtu + 14 + 4  # Ethernet header and one 802.1Q tag


def gso_max_size_for(mtu: int, secure: bool = False) -> int:
    """Largest TSO burst a guest should build so that all its segments fit one UDP_SEGMENT send
    (65,507 bytes of UDP payload): a 64 KiB burst would cost a second send and a second GRO batch."""
    stride = ESP_OVERHEAD + ((2 + 14 + mtu + 2 + 3) & ~3) if secure else FRAME_PREFIX_LEN + mtu + 14
    return min(MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD // stride) * (mtu - 40)


# ESP in UDP: SPI, sequence, IV, ICV around the padded `EtherIP header + frame + pad length + next header`.
ESP_OVERHEAD = 4 + 4 + 8 + 16


def mtu_for(transport: str, underlay_mtu: int, security: str = "none") -> int:
    """Largest inner MTU whose encapsulated packet fits the underlay (DESIGN.md, "MTU")."""
    if security != "none":
        # IPv4 + UDP + ESP; the encrypted part (EtherIP 2 + Ethernet 14 + MTU + 2) is 4-aligned.
        return ((underlay_mtu - 20 - 8 - ESP_OVERHEAD) & ~3) - 2 - 14 - 2
    overhead = 20 + 2 + 14 if transport == "raw" else 20 + 8 + FRAME_PREFIX_LEN + 14
    return underlay_mtu - overhead


