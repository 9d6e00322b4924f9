"""Frames that arrive with the frame flags 0 but are not finished: a partial L4 checksum, or a
whole TCP super-frame. Pure functions on buffers, used by the receive path (`receive.py`).

Who sends them: a host on the eBPF path (docs/ebpf.md). Its `vnet_encap` cannot set the
CSUM_PARTIAL flag (a tc program does not see the skb's `ip_summed`), and on a software underlay
(veth, bridge, virtio without offloads) nothing completes the inner checksum before the wire:
CHECKSUM_PARTIAL crosses a veth as it is, so the datagram carries the inner TCP/UDP checksum
field holding the pseudo-header sum only (folded, not complemented: what the kernel's
`__tcp_v4_send_check` leaves for the device). A GSO super-frame crosses a veth whole, and a UDP
socket takes a UDP-tunnel GSO skb as one datagram of up to 64 KiB. A NIC would have finished
both. Written to a TAP as complete frames, the guest's stack drops them (bad checksum, or larger
than the MTU): TCP between an eBPF host and a userspace host did not even connect.

The test is the field itself: `partial_csum()` returns the checksum's place when the field equals
the frame's pseudo-header sum, computed from the IP header (12 bytes of addresses, protocol and
length; the fast path costs that and one compare). Such a frame is written with NEEDS_CSUM and
the kernel completes it. A complete checksum that happens to equal the pseudo-header sum
(1 in 65,536) needs no telling apart: completing it gives the same value (the sum of the L4
bytes with the field at P is D + P, and a complete checksum C = ~(P + D) that equals P makes
~(D + P) = C), which `tests/unit/gatekeeper/vnet/test_unflagged.py` checks. A corrupt frame whose
field happens to equal P is accepted either way (it cannot be told from a partial one, in
software or not); outside that case a bad checksum is never "fixed": the frame goes to the TAP as
it came and the guest's stack drops it.

`superframe_hdr()` turns a whole IPv4 TCP super-frame back into what a TAP takes: a virtio header
NEEDS_CSUM|TCPV4 with gso_size = MTU - IP header - TCP header (a TCP stream may be cut anywhere;
a UDP super-frame's datagram boundaries are lost with its gso_size, so those are not rebuilt).
"""

from __future__ import annotations

import struct

from gatekeeper.vnet.offload import (
    ETH_LEN,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_IP_LEN,
    NO_VNET_HDR,
    TCP_CWR,
    TCP_MIN_MSS,
    vnet_hdr,
)

IPV6_LEN = 40
_CSUM_OFFSET = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}
# From the EtherType on: EtherType, then IPv4's version/IHL, total length, flags/fragment offset,
# protocol, source and destination (as 16-bit words).
_V4 = struct.Struct("!HBxH2xHxB2x4H")
_V6 = struct.Struct("!4xHBx16H")  # from the IPv6 header: payload length, next header, addresses
_WORD = struct.Struct("!H")


def l4_checksum(frame: bytes | bytearray | memoryview) -> tuple[int, int, int, int] | None:
    """(L4 offset, checksum offset within L4, L4 length, folded pseudo-header sum) of an Ethernet
    frame carrying TCP or UDP in IPv4 (not a fragment) or in IPv6 without extension headers, long
    enough to hold the checksum field and the L4 length its IP header claims; else None."""
    n = len(frame)
    if n < ETH_LEN + 20:
        return None
    # one unpack from the EtherType on: the hot path (IPv4) reads nothing else before the compare
    kind, vihl, total, frag, proto, s0, s1, d0, d1 = _V4.unpack_from(frame, 12)
    if kind == 0x0800:
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or vihl >> 4 != 4 or frag & 0x3FFF:
            return None  # not IPv4, or a fragment (MF or an offset: its checksum spans the datagram)
        l4, l4_len, ps = ETH_LEN + ihl, total - ihl, proto + s0 + s1 + d0 + d1
    elif kind == 0x86DD and n >= ETH_LEN + IPV6_LEN:
        l4_len, proto, *words = _V6.unpack_from(frame, ETH_LEN)
        l4, ps = ETH_LEN + IPV6_LEN, proto + sum(words)
    else:
        return None
    offset = _CSUM_OFFSET.get(proto)
    if offset is None or l4_len < offset + 2 or l4 + l4_len > n:
        return None
    ps += l4_len
    while ps >> 16:
        ps = (ps & 0xFFFF) + (ps >> 16)
    return l4, offset, l4_len, ps


def partial_csum(frame: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """(L4 offset, checksum offset, L4 length) when the frame's TCP/UDP checksum field holds its
    pseudo-header sum, i.e. is partial (or a complete checksum of the same value: equivalent,
    see the module's docstring); None for anything else, which is delivered as it is."""
    loc = l4_checksum(frame)
    if loc is None:
        return None
    l4, offset, l4_len, ps = loc
    if _WORD.unpack_from(frame, l4 + offset)[0] != ps:
        return None
    return l4, offset, l4_len


def csum_hdr(l4: int, offset: int) -> bytes:
    """The virtio header that makes the kernel complete the checksum at l4+offset."""
    return vnet_hdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, l4, offset)


def needs_csum_hdr(frame: bytes | bytearray | memoryview, writable: bytearray | memoryview, offset: int) -> bytes:
    """virtio header for a frame its sender flagged CSUM_PARTIAL; also seeds the checksum field
    inside `writable[offset:]` (the same frame) with the pseudo-header sum for the IP header's
    length. No TCP/UDP checksum found (see `l4_checksum`): no header, the frame goes as it is."""
    loc = l4_checksum(frame)
    if loc is None:
        return NO_VNET_HDR
    l4, csum_off, _, ps = loc
    writable[offset + l4 + csum_off] = ps >> 8
    writable[offset + l4 + csum_off + 1] = ps & 0xFF
    return csum_hdr(l4, csum_off)


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Folded one's-complement sum of 16-bit big-endian words (a trailing odd byte padded)."""
    chunk = bytes(data) + b"\0" * (len(data) & 1)
    total: int = sum(struct.unpack(f"!{len(chunk) // 2}H", chunk))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def classify(frame: bytes | bytearray | memoryview) -> str:
    """Diagnostics and tests (the data path uses `partial_csum` only): "partial" (the field is
    the pseudo-header sum and the full sum does not check), "complete" (the full sum checks),
    "bad" (neither), "none" (no TCP/UDP checksum to look at, or UDP's 0 = not computed)."""
    loc = l4_checksum(frame)
    if loc is None:
        return "none"
    l4, offset, l4_len, ps = loc
    field = _WORD.unpack_from(frame, l4 + offset)[0]
    if offset == 6 and field == 0:
        return "none"
    total = ps + ones_sum(frame[l4:l4 + l4_len])
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if total == 0xFFFF:
        return "complete"
    return "partial" if field == ps else "bad"


def superframe_hdr(frame: bytes | bytearray | memoryview, mtu: int) -> bytes | None:
    """The virtio header for a whole IPv4 TCP super-frame longer than one MTU (NEEDS_CSUM|TCPV4,
    ECN when CWR is set, gso_size = mtu - IP header - TCP header); None when `frame` is not one:
    not IPv4/TCP, a fragment, an IP length that does not cover the frame exactly, over 64 KiB,
    no more payload than one segment holds, or a checksum field other than the pseudo-header sum
    (a GSO frame's is always partial: a complete or bad one would be recomputed, i.e. "fixed")."""
    n = len(frame)
    if n < ETH_LEN + 40 or n > ETH_LEN + MAX_IP_LEN or frame[12] != 0x08 or frame[13] != 0x00:
        return None
    loc = l4_checksum(frame)
    if loc is None or frame[ETH_LEN + 9] != IPPROTO_TCP:
        return None
    l4, _, l4_len, ps = loc
    if l4 + l4_len != n:
        return None  # trailing bytes the IP length does not cover: not something a kernel built
    if _WORD.unpack_from(frame, l4 + 16)[0] != ps:
        return None  # a GSO frame's checksum is partial; anything else there is not ours to "fix"
    thl = (frame[l4 + 12] >> 4) * 4
    mss = mtu - (l4 - ETH_LEN) - thl
    if thl < 20 or l4_len < thl or mss < TCP_MIN_MSS or l4_len - thl <= mss:
        return None
    gso = GSO_TCPV4 | (GSO_ECN if frame[l4 + 13] & TCP_CWR else 0)
    return vnet_hdr(F_NEEDS_CSUM, gso, l4 + thl, mss, l4, 16)
