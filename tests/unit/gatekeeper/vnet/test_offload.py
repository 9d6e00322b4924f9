"""TCP segmentation and coalescing, checked against scapy's own header parsing and checksums."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from gatekeeper.vnet.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    TCP_SYN,
    VNET_HDR_LEN,
    VnetHdr,
    coalesce,
    merge,
    parse_vnet_hdr,
    segment,
)
from gatekeeper.vnet.unflagged import needs_csum_hdr
from softudc.wire.udpframe import FLAG_CSUM_PARTIAL, frame_prefix

PREFIX = frame_prefix(10, FLAG_CSUM_PARTIAL)


def super_frame(payload: bytes, flags: str = "PA", seq: int = 1000, ip_id: int = 7) -> bytes:
    pkt = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
           / IP(src="10.0.0.1", dst="10.0.0.2", id=ip_id, flags="DF")
           / TCP(sport=40000, dport=5201, seq=seq, ack=55, flags=flags, window=500,
                 options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
           / payload)
    return bytes(pkt)


def split(buf: bytes, stride: int, count: int) -> list[bytes]:
    return [buf[i * stride:(i + 1) * stride] for i in range(count)]


def test_segments_are_valid_tcp_segments() -> None:
    payload = bytes(range(256)) * 40  # 10240 bytes
    frame = super_frame(payload, seq=0xFFFFF000)  # sequence numbers wrap inside the burst
    buf, stride, count = segment(memoryview(frame), VnetHdr(1, GSO_TCPV4, 66, 1400, 34, 16), PREFIX)
    assert count == 8 and stride == len(PREFIX) + 66 + 1400
    got = b""
    for i, dgram in enumerate(split(buf, stride, count)):
        assert dgram[:6] == PREFIX
        seg = Ether(dgram[6:])
        ip_sum = seg[IP].chksum
        del seg[IP].chksum
        assert Ether(bytes(seg))[IP].chksum == ip_sum, "IPv4 header checksum"
        assert seg[IP].id == 7 + i and seg[IP].len == 20 + 32 + len(seg[TCP].payload)
        assert seg[TCP].seq == (0xFFFFF000 + i * 1400) & 0xFFFFFFFF
        assert seg[TCP].flags == ("PA" if i == count - 1 else "A")
        got += bytes(seg[TCP].payload)
    assert got == payload


def test_coalescing_rebuilds_the_super_frame() -> None:
    payload = bytes(range(251)) * 37
    frame = super_frame(payload)
    buf, stride, count = segment(memoryview(frame), VnetHdr(1, GSO_TCPV4, 66, 1400, 34, 16), PREFIX)
    runs = list(coalesce(memoryview(buf), stride, count, len(PREFIX)))
    assert runs == [(0, count, 1400)]
    out = merge(memoryview(buf), stride, 0, count, 1400, len(PREFIX))
    vh = parse_vnet_hdr(out)
    assert (vh.flags, vh.gso_type, vh.gso_size, vh.hdr_len, vh.csum_start, vh.csum_offset) == \
        (F_NEEDS_CSUM, GSO_TCPV4, 1400, 66, 34, 16)
    pkt = Ether(out[VNET_HDR_LEN:])
    assert bytes(pkt[TCP].payload) == payload
    assert pkt[TCP].flags == "PA" and pkt[IP].len == 20 + 32 + len(payload)
    ip_sum = pkt[IP].chksum
    del pkt[IP].chksum
    assert Ether(bytes(pkt))[IP].chksum == ip_sum


def test_runs_break_on_gaps_other_flows_and_control_flags() -> None:
    a = segment(memoryview(super_frame(bytes(2800), seq=0)), VnetHdr(1, GSO_TCPV4, 66, 1400, 34, 16), PREFIX)
    gap = segment(memoryview(super_frame(bytes(2800), seq=5000)), VnetHdr(1, GSO_TCPV4, 66, 1400, 34, 16),
                  PREFIX)
    assert a[1] == gap[1]
    buf = a[0] + gap[0]
    runs = list(coalesce(memoryview(buf), a[1], 4, len(PREFIX)))
    assert runs == [(0, 2, 1400), (2, 2, 1400)]
    syn = super_frame(b"", flags="S")
    assert list(coalesce(memoryview(PREFIX + syn), len(PREFIX) + len(syn), 1, len(PREFIX))) == [(0, 1, 0)]


@given(st.integers(1, 30000), st.integers(536, 1448), st.integers(0, 2**32 - 1))
def test_round_trip(size: int, mss: int, seq: int) -> None:
    payload = bytes((i * 7) & 0xFF for i in range(size))
    frame = super_frame(payload, seq=seq)
    buf, stride, count = segment(memoryview(frame), VnetHdr(1, GSO_TCPV4, 66, mss, 34, 16), PREFIX)
    assert count == -(-size // mss)
    merged = b""
    for first, n, run_mss in coalesce(memoryview(buf), stride, count, len(PREFIX)):
        out = merge(memoryview(buf), stride, first, n, run_mss or mss, len(PREFIX))
        merged += bytes(Ether(out[VNET_HDR_LEN:])[TCP].payload)
    assert merged == payload


def test_partial_checksum_is_seeded_so_the_kernel_can_finish_it() -> None:
    frame = bytearray(super_frame(b"hello world"))
    hdr = needs_csum_hdr(memoryview(bytes(frame)), frame, 0)
    vh = parse_vnet_hdr(hdr)
    assert (vh.flags, vh.csum_start, vh.csum_offset) == (F_NEEDS_CSUM, 34, 16)
    # Finishing it the way the kernel does (sum from csum_start, complement) gives scapy's checksum.
    seg = bytes(frame[34:])
    words = sum(int.from_bytes(seg[i:i + 2].ljust(2, b"\0"), "big") for i in range(0, len(seg), 2))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    pkt = Ether(bytes(frame))
    del pkt[TCP].chksum
    assert (~words & 0xFFFF) == Ether(bytes(pkt))[TCP].chksum


@given(st.integers(2, 12), st.integers(0, 11), st.sampled_from(["seq", "vnet", "flow", "flags", "none"]))
def test_scalar_and_vectorised_grouping_agree(count: int, where: int, kind: str) -> None:
    import gatekeeper.vnet.offload as off

    payload = bytes(1000 * count)
    buf, stride, n = segment(memoryview(super_frame(payload)), VnetHdr(1, GSO_TCPV4, 66, 1000, 34, 16), PREFIX)
    data = bytearray(buf)
    k = where % n
    base = k * stride
    if kind == "seq":
        data[base + 6 + 38] ^= 0x01
    elif kind == "vnet":
        data[base + 5] ^= 0x01  # another VNET's datagram in the middle of the batch
    elif kind == "flow":
        data[base + 6 + 34] ^= 0x01  # TCP source port
    elif kind == "flags":
        data[base + 6 + 47] |= TCP_SYN
    results = []
    for threshold in (0, 100):
        off.SCALAR_BATCH = threshold
        try:
            results.append(list(coalesce(memoryview(bytes(data)), stride, n, len(PREFIX))))
        finally:
            off.SCALAR_BATCH = 4
    assert results[0] == results[1]
    # Runs cover every datagram exactly once, in order.
    flat = [i for first, length, _ in results[0] for i in range(first, first + length)]
    assert flat == list(range(n))
    if kind != "none":
        # The altered datagram never joins the run before it.
        assert all(not first < k < first + length for first, length, _ in results[0])


@given(st.integers(1, 20000), st.sampled_from([536, 1000, 1399, 1400]), st.sampled_from([b"\x30\x0a", b"\x30",
                                                                                           b"\x30\x0a\x00"]))
def test_full_checksum_segments_verify_in_scapy(size: int, mss: int, prefix: bytes) -> None:
    """With the 2-byte EtherIP prefix the TCP header is 4-aligned (checksums by 32-bit words);
    odd prefixes take the byte-wise sum. Both must give scapy's checksum, zero included."""
    payload = bytes((i * 13) & 0xFF for i in range(size))
    buf, stride, n = segment(memoryview(super_frame(payload)), VnetHdr(1, GSO_TCPV4, 66, mss, 34, 16),
                             prefix, full_csum=True)
    for k in range(n):
        seg = Ether(buf[k * stride + len(prefix):(k + 1) * stride])
        got = seg[TCP].chksum
        del seg[TCP].chksum
        assert Ether(bytes(seg))[TCP].chksum == got


def test_complete_csum_matches_scapy() -> None:
    from gatekeeper.vnet.offload import complete_csum

    for data in (b"x", b"odd-length payload!", bytes(1400)):
        frame = bytearray(super_frame(data))
        hdr = needs_csum_hdr(memoryview(bytes(frame)), frame, 0)  # seeds the pseudo-header sum
        vh = parse_vnet_hdr(hdr)
        complete_csum(frame, vh.csum_start, vh.csum_offset, len(frame))
        pkt = Ether(bytes(frame))
        got = pkt[TCP].chksum
        del pkt[TCP].chksum
        assert Ether(bytes(pkt))[TCP].chksum == got
