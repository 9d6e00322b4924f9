"""TCP segmentation and coalescing for the UDP transport, so that 64 KiB TAP super-frames cross
the underlay as standard-sized datagrams (UDP GSO) and come back out as super-frames (UDP GRO),
the way wireguard-go does it. Pure functions on buffers; numpy does the per-segment work in bulk.

A TAP opened with IFF_VNET_HDR prefixes every frame with a virtio_net_hdr (virtio spec 5.1.6):

    struct virtio_net_hdr {
        u8  flags;        // 1 = NEEDS_CSUM: checksum from csum_start, store at +csum_offset
        u8  gso_type;     // 0 none, 1 TCPV4, 3 UDP, 4 TCPV6, 0x80 ECN
        le16 hdr_len;     // Ethernet + IP + TCP header bytes
        le16 gso_size;    // MSS
        le16 csum_start;
        le16 csum_offset;
    };

TX: `segment()` cuts a TCPV4 super-frame into frames of one MSS each, every one with a correct
IPv4 header (length, id, checksum) and TCP header (seq, flags: FIN/PSH only on the last, CWR only
on the first), each behind the 6-byte SoftUDC prefix with flag CSUM_PARTIAL: the TCP checksum is
left to the receiving kernel (DESIGN.md allows this between SoftUDC peers only).

RX: `coalesce()` takes the datagrams of one GRO batch and merges runs of consecutive segments of
one TCP flow back into a super-frame with a NEEDS_CSUM|TCPV4 virtio header; anything else is
written one frame at a time. The TCP checksum field is always set to the pseudo-header sum for
the length actually written, which is what NEEDS_CSUM means to the kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

VNET_HDR_LEN = 10
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_ECN = 0, 1, 4, 0x80
_VNET_HDR = struct.Struct("<BBHHHH")
ETH_LEN = 14
ETH_P_IP = 0x0800
IPPROTO_TCP, IPPROTO_UDP = 6, 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128
MAX_IP_LEN = 65535
NO_VNET_HDR = bytes(VNET_HDR_LEN)


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


def parse_vnet_hdr(buf: bytes | bytearray | memoryview) -> VnetHdr:
    return VnetHdr(*_VNET_HDR.unpack_from(buf))


def build_vnet_hdr(h: VnetHdr) -> bytes:
    return _VNET_HDR.pack(h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset)


class OffloadError(ValueError):
    """A frame the offload path cannot handle; the caller drops and counts it."""


def _fold(total: np.ndarray) -> np.ndarray:
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4_checksums(headers: np.ndarray) -> np.ndarray:
    """One's-complement checksums of an (n, ihl) uint8 array of IPv4 headers (checksum field zeroed)."""
    words = headers.view(">u2").astype(np.uint32)
    return (~_fold(words.sum(axis=1)) & 0xFFFF).astype(np.uint16)


def ipv4_checksum(header: bytes | bytearray | memoryview) -> int:
    return int(ipv4_checksums(np.frombuffer(bytes(header), dtype=np.uint8).reshape(1, -1))[0])


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded (not complemented) pseudo-header sum: what a NEEDS_CSUM checksum field holds."""
    total = proto + length
    for b in (src, dst):
        total += (b[0] << 8 | b[1]) + (b[2] << 8 | b[3])
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def segment(frame: memoryview, hdr: VnetHdr, prefix: bytes) -> tuple[bytes, int, int]:
    """Cut a TCPV4 super-frame into `prefix + frame` datagrams of equal size (the last may be
    shorter). Returns (buffer, datagram size, datagram count), ready for UDP_SEGMENT."""
    if hdr.gso_type & ~GSO_ECN != GSO_TCPV4:
        raise OffloadError(f"gso_type {hdr.gso_type:#x} not supported (only TCPV4 is offered)")
    if len(frame) < ETH_LEN + 20 or (frame[12] << 8 | frame[13]) != ETH_P_IP:
        raise OffloadError("TCPV4 super-frame without an IPv4 header")
    ihl = (frame[ETH_LEN] & 0x0F) * 4
    l4 = ETH_LEN + ihl
    if frame[ETH_LEN + 9] != IPPROTO_TCP or len(frame) < l4 + 20:
        raise OffloadError("TCPV4 super-frame without a TCP header")
    thl = (frame[l4 + 12] >> 4) * 4
    hlen = l4 + thl
    mss = hdr.gso_size
    payload = len(frame) - hlen
    if mss <= 0 or payload <= 0:
        raise OffloadError(f"bad super-frame: mss {mss}, payload {payload}")
    n = -(-payload // mss)
    plen = len(prefix)
    stride = plen + hlen + mss
    out = np.zeros((n, stride), dtype=np.uint8)
    src = np.frombuffer(frame, dtype=np.uint8)
    out[:, :plen] = np.frombuffer(prefix, dtype=np.uint8)
    out[:, plen:plen + hlen] = src[:hlen]
    padded = np.zeros(n * mss, dtype=np.uint8)
    padded[:payload] = src[hlen:]
    out[:, plen + hlen:] = padded.reshape(n, mss)
    last = payload - (n - 1) * mss
    ip0, tcp0 = plen + ETH_LEN, plen + l4
    # IPv4 total length and id
    lengths = np.full(n, ihl + thl + mss, dtype=np.uint32)
    lengths[-1] = ihl + thl + last
    out[:, ip0 + 2] = lengths >> 8
    out[:, ip0 + 3] = lengths & 0xFF
    ident = (int(src[ETH_LEN + 4]) << 8 | int(src[ETH_LEN + 5])) + np.arange(n, dtype=np.uint32)
    out[:, ip0 + 4] = (ident >> 8) & 0xFF
    out[:, ip0 + 5] = ident & 0xFF
    out[:, ip0 + 10:ip0 + 12] = 0
    csum = ipv4_checksums(np.ascontiguousarray(out[:, ip0:ip0 + ihl]))
    out[:, ip0 + 10] = csum >> 8
    out[:, ip0 + 11] = csum & 0xFF
    # TCP sequence numbers and flags
    seq0 = int.from_bytes(bytes(src[l4 + 4:l4 + 8]), "big")
    seqs = (seq0 + np.arange(n, dtype=np.uint64) * mss) & 0xFFFFFFFF
    for k in range(4):
        out[:, tcp0 + 4 + k] = (seqs >> (24 - 8 * k)) & 0xFF
    flags = int(src[l4 + 13])
    out[:, tcp0 + 13] = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    out[0, tcp0 + 13] |= flags & TCP_CWR
    out[-1, tcp0 + 13] |= flags & (TCP_FIN | TCP_PSH)
    if n == 1:
        out[0, tcp0 + 13] = flags
    # The TCP checksum stays partial: the receiver seeds it for the length it writes.
    size = n * stride - (mss - last)
    return out.reshape(-1)[:size].tobytes(), stride, n


@dataclass(frozen=True, slots=True)
class TcpKey:
    """What must be equal for two segments to merge: everything but length, id, checksums, seq, PSH."""

    head: bytes


def _tcp_info(frame: memoryview) -> tuple[int, int, int] | None:
    """(l4 offset, header length, flags) if `frame` is a plain IPv4 TCP segment, else None."""
    if len(frame) < ETH_LEN + 40 or frame[12] != 0x08 or frame[13] != 0x00:
        return None
    ihl = (frame[ETH_LEN] & 0x0F) * 4
    if ihl != 20 or frame[ETH_LEN + 9] != IPPROTO_TCP:
        return None  # IP options or not TCP: deliver as is
    if frame[ETH_LEN + 6] & 0x3F or frame[ETH_LEN + 7]:
        return None  # a fragment (MF set or offset): never merge
    l4 = ETH_LEN + ihl
    thl = (frame[l4 + 12] >> 4) * 4
    if len(frame) < l4 + thl:
        return None
    return l4, l4 + thl, frame[l4 + 13]


def needs_csum_hdr(frame: memoryview, writable: bytearray | memoryview, offset: int) -> bytes:
    """virtio header for a single frame whose L4 checksum is partial; also seeds the checksum
    field inside `writable[offset:]` (the same frame) for the frame's own length."""
    if len(frame) < ETH_LEN + 20 or frame[12] != 0x08 or frame[13] != 0x00:
        return NO_VNET_HDR
    ihl = (frame[ETH_LEN] & 0x0F) * 4
    proto = frame[ETH_LEN + 9]
    l4 = ETH_LEN + ihl
    total = (frame[ETH_LEN + 2] << 8) | frame[ETH_LEN + 3]
    if proto == IPPROTO_TCP:
        csum_off = 16
    elif proto == IPPROTO_UDP:
        csum_off = 6
    else:
        return NO_VNET_HDR
    if len(frame) < l4 + csum_off + 2:
        return NO_VNET_HDR
    ps = pseudo_sum(bytes(frame[ETH_LEN + 12:ETH_LEN + 16]), bytes(frame[ETH_LEN + 16:ETH_LEN + 20]), proto,
                    total - ihl)
    writable[offset + l4 + csum_off] = ps >> 8
    writable[offset + l4 + csum_off + 1] = ps & 0xFF
    return _VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, l4, csum_off)


def coalesce(buf: memoryview, stride: int, count: int, prefix_len: int) -> Iterator[tuple[int, int, int]]:
    """Group the `count` datagrams of a GRO batch (datagram i at i*stride, the last possibly
    shorter, total len(buf)) into runs that can merge: yields (first index, run length, mss).

    A run of length 1 is a frame to deliver alone. Datagrams are `prefix + frame`; the caller has
    already checked that every prefix is a frame of one VNET with CSUM_PARTIAL set.
    """
    i = 0
    total = len(buf)
    while i < count:
        start = i * stride
        end = min(start + stride, total)
        frame = buf[start + prefix_len:end]
        info = _tcp_info(frame)
        if info is None or info[2] & (TCP_SYN | TCP_RST | TCP_URG | TCP_FIN | TCP_CWR | TCP_ECE) \
                or not info[2] & TCP_ACK:
            yield i, 1, 0
            i += 1
            continue
        l4, hlen, flags = info
        mss = (end - start) - prefix_len - hlen
        if mss <= 0 or flags & TCP_PSH:
            yield i, 1, 0
            i += 1
            continue
        seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
        key_a = bytes(frame[:ETH_LEN + 2]) + bytes(frame[ETH_LEN + 6:ETH_LEN + 10]) + bytes(frame[ETH_LEN + 12:l4 + 4])
        key_b = bytes(frame[l4 + 8:l4 + 13]) + bytes(frame[l4 + 14:l4 + 16]) + bytes(frame[l4 + 18:hlen])
        size = hlen + mss
        j = i + 1
        while j < count:
            s2 = j * stride
            e2 = min(s2 + stride, total)
            f2 = buf[s2 + prefix_len:e2]
            n2 = len(f2) - hlen
            if n2 <= 0 or n2 > mss or size + n2 - ETH_LEN > MAX_IP_LEN:
                break
            if bytes(f2[:ETH_LEN + 2]) + bytes(f2[ETH_LEN + 6:ETH_LEN + 10]) + bytes(f2[ETH_LEN + 12:l4 + 4]) != key_a:
                break
            if bytes(f2[l4 + 8:l4 + 13]) + bytes(f2[l4 + 14:l4 + 16]) + bytes(f2[l4 + 18:hlen]) != key_b:
                break
            if int.from_bytes(f2[l4 + 4:l4 + 8], "big") != (seq + (j - i) * mss) & 0xFFFFFFFF:
                break
            f2_flags = f2[l4 + 13]
            if f2_flags & ~(TCP_ACK | TCP_PSH):
                break
            size += n2
            j += 1
            if f2_flags & TCP_PSH or n2 < mss:
                break  # PSH or a short segment ends a run, as in Linux GRO
        yield i, j - i, mss
        i = j


def merge(buf: memoryview, stride: int, first: int, count: int, mss: int, prefix_len: int) -> bytes:
    """Build `virtio hdr + super-frame` from datagrams first..first+count-1 (a run from coalesce)."""
    total = len(buf)
    start = first * stride + prefix_len
    head_frame = buf[start:min(first * stride + stride, total)]
    l4, hlen, _ = _tcp_info(head_frame)  # type: ignore[misc]
    parts = [bytearray(head_frame[:hlen])]
    flags = 0
    for k in range(first, first + count):
        s = k * stride + prefix_len
        e = min(k * stride + stride, total)
        parts.append(bytearray(buf[s + hlen:e]))
        flags |= buf[s + l4 + 13]
    head = parts[0]
    payload_len = sum(len(p) for p in parts[1:])
    ip_len = hlen - ETH_LEN + payload_len
    head[ETH_LEN + 2] = ip_len >> 8
    head[ETH_LEN + 3] = ip_len & 0xFF
    head[ETH_LEN + 10] = head[ETH_LEN + 11] = 0
    c = ipv4_checksum(head[ETH_LEN:l4])
    head[ETH_LEN + 10] = c >> 8
    head[ETH_LEN + 11] = c & 0xFF
    head[l4 + 13] = flags
    ps = pseudo_sum(bytes(head[ETH_LEN + 12:ETH_LEN + 16]), bytes(head[ETH_LEN + 16:ETH_LEN + 20]), IPPROTO_TCP,
                    ip_len - (l4 - ETH_LEN))
    head[l4 + 16] = ps >> 8
    head[l4 + 17] = ps & 0xFF
    gso = GSO_TCPV4 if count > 1 else GSO_NONE
    vh = _VNET_HDR.pack(F_NEEDS_CSUM, gso, hlen, mss if count > 1 else 0, l4, 16)
    return vh + b"".join(parts)
