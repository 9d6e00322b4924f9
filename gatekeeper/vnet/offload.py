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

import functools
import struct
import sys
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
TCP_MIN_MSS = 88  # Linux's floor for a peer's MSS (since the SACK panic fixes, CVE-2019-11477/9)
# ufunc reductions called directly: the ndarray.sum/any wrappers cost microseconds per call here.
_ADD = np.add.reduce
_OR = np.bitwise_or.reduce
SCALAR_BATCH = 4  # up to this many datagrams, plain Python beats numpy's fixed cost
_SEG_FIELDS = np.dtype([("len", ">u2"), ("id", ">u2"), ("csum", ">u2"), ("seq", ">u4")])
NO_VNET_HDR = bytes(VNET_HDR_LEN)
_LITTLE = sys.byteorder == "little"


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


def vnet_hdr(flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int, csum_offset: int) -> bytes:
    return _VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


class OffloadError(ValueError):
    """A frame the offload path cannot handle; the caller drops and counts it."""


def ipv4_checksum(header: bytes | bytearray | memoryview) -> int:
    """Checksum of one header (its checksum field zeroed); plain Python beats numpy at 20 bytes."""
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded (not complemented) pseudo-header sum: what a NEEDS_CSUM checksum field holds."""
    total = proto + length
    for b in (src, dst):
        total += (b[0] << 8 | b[1]) + (b[2] << 8 | b[3])
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def segment(frame: memoryview, hdr: VnetHdr, prefix: bytes, full_csum: bool = False) -> tuple[bytes, int, int]:
    """Cut a TCPV4 super-frame into `prefix + frame` datagrams of equal size (the last may be
    shorter). Returns (buffer, datagram size, datagram count), ready for UDP_SEGMENT.

    With `full_csum` every segment gets its complete TCP checksum (for peers that must never
    see a partial one: the raw EtherIP transport); otherwise the checksum is left partial."""
    seg = segment_rows(frame, hdr, prefix, full_csum, room=0)
    rows = seg.rows if seg.rows.shape[1] == seg.stride else np.ascontiguousarray(seg.rows[:, :seg.stride])
    size = seg.count * seg.stride - (seg.stride - seg.last)
    return rows.reshape(-1)[:size].tobytes(), seg.stride, seg.count


@dataclass(frozen=True, slots=True)
class Segments:
    """A super-frame cut into rows: row k holds `prefix + frame k` in its first `stride` bytes
    (the last row in its first `last`); the `room` bytes after each are zero."""

    rows: np.ndarray
    stride: int
    count: int
    last: int


def segment_rows(frame: memoryview, hdr: VnetHdr, prefix: bytes, full_csum: bool = False,
                 room: int = 0) -> Segments:
    """`segment`'s work, as a (count, stride + room) array: the `room` zero bytes behind every
    segment are where ESP puts its trailer, so each row seals in place without a copy."""
    if hdr.gso_type & ~GSO_ECN != GSO_TCPV4:
        raise OffloadError(f"gso_type {hdr.gso_type:#x} not supported (only TCPV4 is offered)")
    if len(frame) < ETH_LEN + 20 or (frame[12] << 8 | frame[13]) != ETH_P_IP:
        raise OffloadError("TCPV4 super-frame without an IPv4 header")
    ihl = (frame[ETH_LEN] & 0x0F) * 4
    l4 = ETH_LEN + ihl
    if ihl < 20 or frame[ETH_LEN + 9] != IPPROTO_TCP or len(frame) < l4 + 20:
        raise OffloadError("TCPV4 super-frame without a valid IPv4 and TCP header")
    thl = (frame[l4 + 12] >> 4) * 4
    if thl < 20:  # R4: a data offset below 5 made the header template shorter than its fields
        raise OffloadError(f"TCPV4 super-frame with a TCP header of {thl} bytes (at least 20)")
    hlen = l4 + thl
    mss = hdr.gso_size
    payload = len(frame) - hlen
    if mss <= 0 or payload <= 0 or hlen > len(frame):
        raise OffloadError(f"bad super-frame: mss {mss}, payload {payload}")
    if mss < TCP_MIN_MSS or hlen - ETH_LEN + mss > MAX_IP_LEN:
        # The guest chooses gso_size: a tiny one would turn 64 KiB into thousands of datagrams,
        # a huge one into segments no IPv4 length field can describe.
        raise OffloadError(f"bad super-frame: mss {mss} outside {TCP_MIN_MSS}..{MAX_IP_LEN - (hlen - ETH_LEN)}")
    n = -(-payload // mss)
    last = payload - (n - 1) * mss
    plen = len(prefix)
    width = plen + hlen
    stride = width + mss
    if full_csum:
        room += -(stride + room) % 4  # rows of whole 32-bit words: the checksum sums them so

    # The header every segment starts from: full-size length, the first segment's id and seq,
    # ACK-only flags (PSH/FIN go on the last, CWR on the first), IPv4 checksum for that header.
    template = bytearray(prefix) + bytearray(frame[:hlen])
    ip0, tcp0 = plen + ETH_LEN, plen + l4
    flags = template[tcp0 + 13]
    template[ip0 + 2:ip0 + 4] = (hlen - ETH_LEN + mss).to_bytes(2, "big")
    template[ip0 + 10:ip0 + 12] = b"\0\0"
    template[tcp0 + 13] = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    base = sum(struct.unpack(f"!{ihl // 2}H", template[ip0:ip0 + ihl]))

    out = np.empty((n, stride + room), dtype=np.uint8)
    out[:, :width] = np.frombuffer(template, dtype=np.uint8)
    out[:, stride:] = 0
    src = np.frombuffer(frame, dtype=np.uint8)
    if n > 1:
        out[:n - 1, width:stride] = src[hlen:hlen + (n - 1) * mss].reshape(n - 1, mss)
    out[n - 1, width:width + last] = src[hlen + (n - 1) * mss:]

    idx = np.arange(n, dtype=np.uint32)
    ident0 = int.from_bytes(template[ip0 + 4:ip0 + 6], "big")
    idents = (idx + ident0) & 0xFFFF
    # Checksum = ~fold(base - ident0 + ident_i), adjusted for the shorter last segment.
    sums = idents.astype(np.int64) + (base - ident0)
    sums[-1] += last - mss
    sums = ((sums - 1) % 0xFFFF + 1).astype(np.uint32)  # one's-complement fold of a positive sum
    csums = ~sums & 0xFFFF
    seqs = (int.from_bytes(template[tcp0 + 4:tcp0 + 8], "big") + idx.astype(np.uint64) * mss) & 0xFFFFFFFF
    # The per-segment fields, big-endian, scattered into their columns in one assignment.
    fields = np.empty(n, dtype=_SEG_FIELDS)
    fields["len"] = hlen - ETH_LEN + mss
    fields["len"][-1] = hlen - ETH_LEN + last
    fields["id"] = idents
    fields["csum"] = csums
    fields["seq"] = seqs
    cols = np.array([ip0 + 2, ip0 + 3, ip0 + 4, ip0 + 5, ip0 + 10, ip0 + 11, tcp0 + 4, tcp0 + 5, tcp0 + 6, tcp0 + 7])
    out[:, cols] = fields.view(np.uint8).reshape(n, 10)
    out[0, tcp0 + 13] |= flags & TCP_CWR
    out[-1, tcp0 + 13] |= flags & (TCP_FIN | TCP_PSH)
    if full_csum:
        out[n - 1, width + last:] = 0  # the padding must not count
        _tcp_checksums(out, tcp0, hlen - l4, mss, last, bytes(frame[ETH_LEN + 12:ETH_LEN + 20]))
    return Segments(out, stride, n, width + last)


def _tcp_checksums(out: np.ndarray, tcp0: int, thl: int, mss: int, last: int, addrs: bytes) -> None:
    """Complete TCP checksums of every row of `out` (segments from column tcp0, zeros after each
    segment, rows a multiple of 4 bytes wide), in place. The one's-complement sum does not depend
    on byte order or word width (RFC 1071 2(B), 2(D)): from a 4-aligned column the rows are summed
    as native 32-bit words, the pseudo-header added in native order, folded with one modulo
    (few numpy calls: each costs microseconds on 44 rows); else byte by byte."""
    out[:, tcp0 + 16:tcp0 + 18] = 0
    if tcp0 % 4:
        _tcp_checksums_bytewise(out, tcp0, thl, mss, last, addrs)
        return
    base = sum(struct.unpack("!4H", addrs)) + IPPROTO_TCP
    full, short = _native16(base + thl + mss), _native16(base + thl + last)
    total = _ADD(out[:, tcp0:].view(np.uint32), axis=1, dtype=np.uint64)
    total += full
    total[-1] += short + 0xFFFF - full  # the last segment's length (+0xFFFF keeps it positive)
    folded = (total - 1) % 0xFFFF + 1  # one's-complement fold of a positive sum: 1..0xFFFF
    csum = (0xFFFF - folded).astype(np.uint16)  # native order: its bytes are the field's bytes
    out[:, tcp0 + 16:tcp0 + 18] = csum.view(np.uint8).reshape(len(out), 2)


def _native16(value: int) -> int:
    """A network-order one's-complement sum, folded, as the native-order 16-bit sum."""
    value = (value - 1) % 0xFFFF + 1
    return ((value & 0xFF) << 8 | value >> 8) if _LITTLE else value


def _tcp_checksums_bytewise(out: np.ndarray, tcp0: int, thl: int, mss: int, last: int, addrs: bytes) -> None:
    block = out[:, tcp0:]
    total = _ADD(block[:, 0::2], axis=1, dtype=np.uint64) * 256 + _ADD(block[:, 1::2], axis=1, dtype=np.uint64)
    lengths = np.full(len(out), thl + mss, dtype=np.uint64)
    lengths[-1] = thl + last
    src_dst = sum(struct.unpack("!4H", addrs))
    total += lengths + (src_dst + IPPROTO_TCP)
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    csum = (~total & 0xFFFF).astype(np.uint16)
    out[:, tcp0 + 16] = csum >> 8
    out[:, tcp0 + 17] = csum & 0xFF


def complete_csum(buf: bytearray | memoryview, start: int, offset: int, end: int) -> None:
    """Finish a partial checksum in place, as the kernel's skb_checksum_help does: the field at
    start+offset holds the pseudo-header seed; sum [start, end), complement, store."""
    if end - start <= 256:  # ACKs and the like: plain Python beats numpy's fixed cost
        chunk = bytes(buf[start:end]) + b"\0" * ((end - start) & 1)
        total = sum(struct.unpack(f"!{len(chunk) // 2}H", chunk))
    else:
        data = np.frombuffer(buf, dtype=np.uint8, count=end - start, offset=start)
        total = int(_ADD(data[0::2], dtype=np.uint64)) * 256 + int(_ADD(data[1::2], dtype=np.uint64))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    csum = ~total & 0xFFFF
    if csum == 0 and offset == 6:
        csum = 0xFFFF  # UDP: a computed zero is sent as all ones (RFC 768)
    buf[start + offset] = csum >> 8
    buf[start + offset + 1] = csum & 0xFF


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
    # R2: the data offset (4 bits, so at most 60 bytes) must cover the fixed 20-byte header, or
    # the flow mask and the seq/flag offsets below would point past the header.
    if thl < 20 or len(frame) < l4 + thl:
        return None
    return l4, l4 + thl, frame[l4 + 13]


@functools.lru_cache(maxsize=64)
def _and_mask(prefix_mask: bytes, l4: int, hlen: int) -> np.ndarray:
    """Byte mask over `prefix + headers`: the prefix's own mask, then 0xFF where segments of one
    flow must be equal, 0 where they may differ (IPv4 total length, id, checksum; TCP seq and
    checksum), and all flag bits but PSH at the TCP flags (so every segment carries the first one's
    ACK-only flags, PSH allowed)."""
    prefix_len = len(prefix_mask)
    mask = np.full(prefix_len + hlen, 0xFF, dtype=np.uint8)
    mask[:prefix_len] = np.frombuffer(prefix_mask, dtype=np.uint8)
    p = prefix_len
    for a, b in ((ETH_LEN + 2, ETH_LEN + 6), (ETH_LEN + 10, ETH_LEN + 12), (l4 + 4, l4 + 8), (l4 + 16, l4 + 18)):
        mask[p + a:p + b] = 0
    mask[p + l4 + 13] = 0xFF & ~TCP_PSH
    return mask


def coalesce(buf: memoryview, stride: int, count: int, prefix_len: int,
             prefix_mask: bytes | None = None) -> Iterator[tuple[int, int, int]]:
    """Group the `count` datagrams of a GRO batch (datagram i at i*stride, the last possibly
    shorter, total len(buf)) into runs that can merge: yields (first index, run length, mss).

    A run of length 1 is a frame to deliver alone. Datagrams are `prefix + frame`; runs only form
    between datagrams whose prefix is identical where `prefix_mask` (default: all of it) says so.
    The checks are Linux GRO's: same flow and TCP
    options, consecutive sequence numbers, only ACK (and PSH, which ends a run) set, equal sizes
    but for a shorter last one, and at most 64 KiB merged.
    """
    pmask = prefix_mask if prefix_mask is not None else b"\xff" * prefix_len
    total = len(buf)
    full = total // stride  # datagrams of exactly `stride` bytes
    i = 0
    while i < count:
        start = i * stride
        end = min(start + stride, total)
        frame = buf[start + prefix_len:end]
        info = _tcp_info(frame)
        if info is None or info[2] != TCP_ACK or end - start != stride:
            yield i, 1, 0
            i += 1
            continue
        l4, hlen, _ = info
        mss = stride - prefix_len - hlen
        if mss <= 0:
            yield i, 1, 0
            i += 1
            continue
        if full - i <= SCALAR_BATCH:
            j = i + _scalar_run(buf, stride, i, full, pmask, l4, hlen, mss)
            if j == full and full < count and not buf[(j - 1) * stride + prefix_len + l4 + 13] & TCP_PSH:
                head0 = np.frombuffer(buf, dtype=np.uint8, count=prefix_len + hlen, offset=i * stride)
                seq0 = int.from_bytes(buf[i * stride + prefix_len + l4 + 4:i * stride + prefix_len + l4 + 8], "big")
                j += _tail_continues(buf, full * stride, head0, pmask, l4, hlen, seq0 + (j - i) * mss)
            j = min(j, i + max(1, (MAX_IP_LEN + ETH_LEN - hlen) // mss))
            yield i, j - i, mss
            i = j
            continue
        width = prefix_len + hlen
        rows = np.frombuffer(buf, dtype=np.uint8, count=full * stride).reshape(full, stride)
        heads = rows[i:, :width]
        diff = _OR((heads ^ heads[0]) & _and_mask(pmask, l4, hlen), axis=1)
        seqs = np.ascontiguousarray(heads[:, prefix_len + l4 + 4:prefix_len + l4 + 8]).view(">u4").ravel()
        expected = (np.arange(len(heads), dtype=np.uint64) * mss + int(seqs[0])) & 0xFFFFFFFF
        bad = np.flatnonzero(diff.astype(bool) | (seqs != expected))
        run = int(bad[0]) if len(bad) else len(heads)
        psh = np.flatnonzero(heads[:run, prefix_len + l4 + 13] & TCP_PSH)
        if len(psh):
            run = int(psh[0]) + 1  # PSH ends a run, as in Linux GRO
        j = i + run
        if j == full and full < count and not len(psh):
            j += _tail_continues(buf, full * stride, heads[0], pmask, l4, hlen, int(seqs[0]) + run * mss)
        j = min(j, i + max(1, (MAX_IP_LEN + ETH_LEN - hlen) // mss))  # keep the merged packet under 64 KiB
        yield i, j - i, mss
        i = j


def _scalar_run(buf: memoryview, stride: int, i: int, full: int, prefix_mask: bytes, l4: int, hlen: int,
                mss: int) -> int:
    """The same checks as the vectorised path, one datagram at a time: cheaper for a handful."""
    base = i * stride
    prefix_len = len(prefix_mask)
    mask = _and_mask(prefix_mask, l4, hlen)
    ref = bytes(buf[base:base + prefix_len + hlen])
    seq0 = int.from_bytes(ref[prefix_len + l4 + 4:prefix_len + l4 + 8], "big")
    run = 1
    for k in range(i + 1, full):
        row = bytes(buf[k * stride:k * stride + prefix_len + hlen])
        if any((a ^ b) & m for a, b, m in zip(row, ref, mask, strict=True)):
            break
        if int.from_bytes(row[prefix_len + l4 + 4:prefix_len + l4 + 8], "big") != (seq0 + run * mss) & 0xFFFFFFFF:
            break
        run += 1
        if row[prefix_len + l4 + 13] & TCP_PSH:
            break
    return run


def _tail_continues(buf: memoryview, off: int, head0: np.ndarray, prefix_mask: bytes, l4: int, hlen: int,
                    seq: int) -> int:
    """1 if the shorter last datagram at `off` continues the run, else 0."""
    prefix_len = len(prefix_mask)
    width = prefix_len + hlen
    if len(buf) - off <= width:
        return 0
    last = np.frombuffer(buf, dtype=np.uint8, count=width, offset=off)
    if ((last ^ head0) & _and_mask(prefix_mask, l4, hlen)).any():
        return 0
    return int(int.from_bytes(buf[off + prefix_len + l4 + 4:off + prefix_len + l4 + 8], "big") == seq & 0xFFFFFFFF)


def merge(buf: memoryview, stride: int, first: int, count: int, mss: int, prefix_len: int) -> bytes:
    """Build `virtio hdr + super-frame` from datagrams first..first+count-1 (a run from coalesce)."""
    total = len(buf)
    start = first * stride + prefix_len
    head_frame = buf[start:min(first * stride + stride, total)]
    info = _tcp_info(head_frame)
    assert info is not None
    l4, hlen, _ = info
    end = min((first + count) * stride, total)
    span = np.frombuffer(buf, dtype=np.uint8, count=end - first * stride, offset=first * stride)
    full = len(span) // stride
    rows = span[:full * stride].reshape(full, stride)[:, prefix_len + hlen:]
    tail = span[full * stride + prefix_len + hlen:] if len(span) > full * stride else span[:0]
    payload = rows.tobytes() + tail.tobytes()
    flags = int(np.bitwise_or.reduce(span[:full * stride].reshape(full, stride)[:, prefix_len + l4 + 13]))
    if len(tail) or len(span) > full * stride:
        flags |= buf[full * stride + first * stride + prefix_len + l4 + 13]
    head = bytearray(head_frame[:hlen])
    ip_len = hlen - ETH_LEN + len(payload)
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
    return vh + bytes(head) + payload
