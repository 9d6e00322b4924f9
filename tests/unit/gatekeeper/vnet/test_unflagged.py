"""Frames an eBPF host sends unflagged (gatekeeper/vnet/unflagged.py): the checksum classification
(partial, complete, bad) on random frames, checked against scapy's checksums, and whole TCP
super-frames turned back into a GSO write whose segments (cut as the kernel would) are right."""

from __future__ import annotations

import struct
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from gatekeeper.vnet.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    VNET_HDR_LEN,
    complete_csum,
    parse_vnet_hdr,
    segment,
)
from gatekeeper.vnet.unflagged import (
    classify,
    l4_checksum,
    needs_csum_hdr,
    ones_sum,
    partial_csum,
    superframe_hdr,
)

MTU = 1452
MAC = "02:00:00:00:00:02"
CHECK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
v4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str(n >> s & 0xFF) for s in (24, 16, 8, 0)))
v6 = st.binary(min_size=16, max_size=16).map(lambda b: ":".join(b[i:i + 2].hex() for i in range(0, 16, 2)))


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    """An Ethernet frame with TCP or UDP over IPv4 or IPv6, checksum left for scapy to compute."""
    if draw(st.booleans()):
        ip: Packet = IP(src=draw(v4), dst=draw(v4), id=draw(st.integers(0, 0xFFFF)), flags="DF")
    else:
        ip = IPv6(src=draw(v6), dst=draw(v6))
    sport, dport = draw(st.integers(1, 0xFFFF)), draw(st.integers(1, 0xFFFF))
    l4: Packet = (TCP(seq=draw(st.integers(0, 2**32 - 1)), flags=draw(st.sampled_from(["A", "PA", "S", "SA", "FA"])),
                      sport=sport, dport=dport) if draw(st.booleans()) else UDP(sport=sport, dport=dport))
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4 / Raw(draw(st.binary(max_size=1400)))


def l4_of(pkt: Packet) -> Packet:
    return cast(Packet, pkt[TCP] if TCP in pkt else pkt[UDP])  # scapy types a layer lookup as Any


def complete(pkt: Packet) -> bytes:
    """The frame with its correct checksum (scapy's)."""
    return bytes(pkt)


def with_field(frame: bytes | bytearray, value: int) -> bytearray:
    loc = l4_checksum(frame)
    assert loc is not None
    out = bytearray(frame)
    out[loc[0] + loc[1]:loc[0] + loc[1] + 2] = value.to_bytes(2, "big")
    return out


def deliver(frame: bytearray) -> bytes:
    """What the guest's stack ends up checking: the frame as the receive path writes it, with the
    checksum completed the way the kernel completes NEEDS_CSUM (sum from csum_start, complement)."""
    at = partial_csum(frame)
    if at is not None:
        l4, offset, l4_len = at
        complete_csum(frame, l4, offset, l4 + l4_len)
    return bytes(frame)


def checks(frame: bytes) -> bool:
    """scapy's verdict: the L4 checksum in `frame` is the one scapy computes."""
    pkt = Ether(frame)
    got = l4_of(pkt).chksum
    del l4_of(pkt).chksum
    return bool(l4_of(Ether(bytes(pkt))).chksum == got)


@CHECK
@given(packets())
def test_a_partial_checksum_is_found_and_completing_it_gives_scapys(pkt: Packet) -> None:
    good = complete(pkt)
    loc = l4_checksum(good)
    assert loc is not None
    partial = with_field(good, loc[3])  # what CHECKSUM_PARTIAL leaves: the pseudo-header sum
    assert partial_csum(partial) == loc[:3]
    assert classify(partial) in ("partial", "complete")  # "complete": 1 in 65,536, same value
    assert deliver(partial) == good


@CHECK
@given(packets())
def test_a_complete_checksum_is_left_as_it_is(pkt: Packet) -> None:
    good = complete(pkt)
    loc = l4_checksum(good)
    assert loc is not None
    field = struct.unpack_from("!H", good, loc[0] + loc[1])[0]
    assert classify(good) == ("none" if UDP in pkt and field == 0 else "complete")
    if field != loc[3]:
        assert partial_csum(good) is None  # the fast path: 12 bytes summed, one compare
    assert deliver(bytearray(good)) == good


@CHECK
@given(packets(), st.integers(0, 0xFFFF))
def test_a_bad_checksum_is_never_made_good(pkt: Packet, value: int) -> None:
    good = complete(pkt)
    loc = l4_checksum(good)
    assert loc is not None
    correct = struct.unpack_from("!H", good, loc[0] + loc[1])[0]
    if value in (correct, loc[3]) or (UDP in pkt and value == 0) or (correct == 0xFFFF and value == 0):
        return  # not a bad checksum (UDP: 0 = none, and 0/0xFFFF are the same one's-complement zero)
    bad = with_field(good, value)
    assert classify(bad) == "bad"
    assert partial_csum(bad) is None
    out = deliver(bad)
    assert out == bytes(bad) and not checks(out)  # delivered as it came: the guest's stack drops it


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_complete_checksum_equal_to_the_pseudo_header_sum_survives_completion(proto: str) -> None:
    """The 1-in-65,536 case, built on purpose: one payload word chosen so that the complete
    checksum equals the pseudo-header sum. Taken for partial, completing it changes nothing."""
    l4: Packet = TCP(sport=1, dport=2, flags="A") if proto == "tcp" else UDP(sport=1, dport=2)
    pkt = Ether(dst=MAC) / IP(src="10.1.2.3", dst="10.3.2.1") / l4 / Raw(bytes(100))
    frame = bytearray(bytes(pkt))
    loc = l4_checksum(frame)
    assert loc is not None
    l4_off, offset, l4_len, ps = loc
    frame[l4_off + offset:l4_off + offset + 2] = ps.to_bytes(2, "big")  # the field: P
    # checksum of the segment = ~fold(P + D) where D sums the L4 bytes with the field at 0; we want it
    # equal to P, i.e. fold(P + D) = 0xFFFF - P: choose the last payload word w to make it so
    frame[l4_off + offset:l4_off + offset + 2] = b"\0\0"
    base = ones_sum(frame[l4_off:l4_off + l4_len])
    w = (0xFFFF - ps - ps - base) % 0xFFFF
    frame[-2:] = w.to_bytes(2, "big")
    frame[l4_off + offset:l4_off + offset + 2] = ps.to_bytes(2, "big")
    assert checks(bytes(frame)), "the construction gives a complete checksum"
    assert classify(frame) == "complete" and partial_csum(frame) is not None
    assert deliver(bytearray(frame)) == bytes(frame)


def test_flagged_partial_frames_are_seeded_for_ipv4_and_ipv6() -> None:
    for ip in (IP(src="10.0.0.1", dst="10.0.0.2"), IPv6(src="fd00::1", dst="fd00::2")):
        good = bytes(Ether(dst=MAC) / ip / TCP(flags="PA") / Raw(b"x" * 33))
        frame = with_field(good, 0x1234)  # a flagged frame's field is overwritten with the seed
        vh = parse_vnet_hdr(needs_csum_hdr(memoryview(bytes(frame)), frame, 0))
        assert (vh.flags, vh.csum_offset) == (F_NEEDS_CSUM, 16)
        complete_csum(frame, vh.csum_start, vh.csum_offset, len(frame))
        assert bytes(frame) == good
    assert needs_csum_hdr(memoryview(bytes(60)), bytearray(60), 0) == bytes(VNET_HDR_LEN)  # nothing to seed


@pytest.mark.parametrize("frame", [
    bytes(Ether(dst=MAC) / IP(flags="MF") / TCP() / Raw(bytes(20))),  # a fragment
    bytes(Ether(dst=MAC) / IP(proto=47) / Raw(bytes(40))),  # not TCP/UDP
    bytes(Ether(dst=MAC) / IP() / TCP() / Raw(bytes(20)))[:40],  # shorter than its IP length
    bytes(Ether(dst=MAC) / IPv6(nh=0) / Raw(bytes(40))),  # an IPv6 extension header
    bytes(Ether(dst=MAC, type=0x0806) / Raw(bytes(46))),  # ARP
    bytes(10),
])
def test_nothing_to_classify(frame: bytes) -> None:
    assert l4_checksum(frame) is None and partial_csum(frame) is None and classify(frame) == "none"


def super_frame(payload: int, flags: str = "A", options: list[tuple[str, object]] | None = None,
                partial: bool = True) -> bytearray:
    data = bytes(range(256)) * (payload // 256) + bytes(payload % 256)
    pkt = (Ether(dst=MAC) / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", id=9)
           / TCP(sport=5, dport=6, seq=1000, flags=flags, options=options or []) / Raw(data))
    frame = bytearray(bytes(pkt))
    loc = l4_checksum(frame)
    assert loc is not None
    return with_field(frame, loc[3]) if partial else frame


@CHECK
@given(st.integers(MTU - 40 + 1, 65535 - 52), st.booleans())
def test_a_whole_super_frame_becomes_one_gso_write_whose_segments_are_right(payload: int, stamps: bool) -> None:
    options: list[tuple[str, object]] = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))] if stamps else []
    frame = super_frame(payload, "PA", options)  # partial: its field holds the seed the kernel's GSO adjusts
    original = bytes(frame)
    hdr = superframe_hdr(original, MTU)
    assert hdr is not None
    vh = parse_vnet_hdr(hdr)
    thl = 32 if stamps else 20
    assert (vh.flags, vh.gso_type, vh.hdr_len, vh.gso_size, vh.csum_start, vh.csum_offset) == (
        F_NEEDS_CSUM, GSO_TCPV4, 14 + 20 + thl, MTU - 20 - thl, 34, 16)
    # the kernel's GSO, done by our own segmenter with complete checksums: every segment fits the
    # MTU, checks with scapy, and together they carry the payload in order
    data, stride, count = segment(memoryview(bytes(frame)), vh, b"", full_csum=True)
    segs = [data[k * stride:(k + 1) * stride] for k in range(count)]
    assert all(len(s) <= MTU + 14 for s in segs) and all(checks(s) for s in segs)
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == bytes(Ether(original)[TCP].payload)
    assert Ether(segs[-1])[TCP].flags == "PA"


@CHECK
@given(st.integers(MTU - 40 + 1, 30000), st.integers(0, 0xFFFF))
def test_a_super_frame_whose_checksum_is_not_partial_is_refused(payload: int, value: int) -> None:
    """GSO frames always carry a partial checksum; a complete or bad one would be recomputed by the
    segmentation, i.e. silently made good, so such a frame is not taken (dropped as oversize)."""
    frame = super_frame(payload, partial=False)
    loc = l4_checksum(frame)
    assert loc is not None
    assert superframe_hdr(bytes(frame), MTU) is None or loc[3] == struct.unpack_from("!H", frame, 50)[0]
    if value != loc[3]:
        assert superframe_hdr(bytes(with_field(bytes(frame), value)), MTU) is None


def test_cwr_on_a_super_frame_asks_for_ecn_segmentation() -> None:
    frame = super_frame(5000, "AC")
    hdr = superframe_hdr(bytes(frame), MTU)
    assert hdr is not None and parse_vnet_hdr(hdr).gso_type == GSO_TCPV4 | GSO_ECN


@pytest.mark.parametrize("frame", [
    super_frame(MTU - 40),  # fits one segment: not a super-frame
    super_frame(5000) + bytes(8),  # trailing bytes the IP length does not cover
    bytearray(bytes(Ether(dst=MAC) / IP() / UDP() / Raw(bytes(5000)))),  # UDP: datagram boundaries unknown
    bytearray(bytes(Ether(dst=MAC) / IPv6() / TCP() / Raw(bytes(5000)))),  # the eBPF path sends no IPv6 GSO
    bytearray(bytes(Ether(dst=MAC) / IP(flags="MF") / TCP() / Raw(bytes(5000)))),  # a fragment
    super_frame(60000) + bytes(10000),  # beyond 64 KiB
])
def test_not_a_super_frame(frame: bytearray) -> None:
    assert superframe_hdr(bytes(frame), MTU) is None


def test_a_tiny_mtu_is_no_excuse_for_tiny_segments() -> None:
    frame = super_frame(5000)
    assert superframe_hdr(bytes(frame), 100) is None  # MSS 60 < Linux's 88
