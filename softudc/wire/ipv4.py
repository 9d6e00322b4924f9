"""IPv4/UDP helpers for packets vnetd relays whole."""

from __future__ import annotations

import struct

from softudc.wire.errors import WireError


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def with_udp_checksum(packet: bytes) -> bytes:
    """The IPv4/UDP packet with its UDP checksum computed afresh (RFC 768).

    A packet captured on the sending host's side of a veth or a NIC with checksum offload may
    still carry only the pseudo-header sum; re-sent as it is, every receiver would drop it.
    """
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        raise WireError("ipv4: not an IPv4/UDP packet")
    ihl = (packet[0] & 0x0F) * 4
    udp_len = int.from_bytes(packet[ihl + 4:ihl + 6], "big")
    if udp_len < 8 or ihl + udp_len > len(packet):
        raise WireError(f"ipv4: UDP length {udp_len} does not fit the packet")
    udp = bytearray(packet[ihl:ihl + udp_len])
    udp[6:8] = b"\0\0"
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, udp_len)
    csum = ~_sum16(pseudo + bytes(udp)) & 0xFFFF
    udp[6:8] = (csum or 0xFFFF).to_bytes(2, "big")
    return packet[:ihl] + bytes(udp) + packet[ihl + udp_len:]
