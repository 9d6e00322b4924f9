"""The C coalescing of opened ESP frames (`esp_native.coalesce`) against offload.py's `coalesce` +
`merge`: the same runs and the same merged super-frames, byte for byte, on batches of segments of
one flow with every kind of break (another flow, a sequence gap, PSH, a SYN, a short last one, a
fragment, IP options, junk), and arguments that do not fit refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from gatekeeper.vnet import esp_native, offload
from softudc.wire.errors import WireError

PREFIX = b"\x30\x0a"


@pytest.fixture(autouse=True, scope="module")
def built() -> None:
    assert esp_native.engine() == "native", f"the native ESP library is not built: {esp_native.WHY}"


def segment(seq: int, size: int, flags: str = "A", sport: int = 40000, ident: int = 1, frag: int = 0,
            options: bool = True) -> bytes:
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))] if options else []
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2", id=ident, flags="DF" if not frag else "MF", frag=frag)
                 / TCP(sport=sport, dport=5201, seq=seq, ack=55, flags=flags, window=500, options=opts)
                 / (bytes([seq & 0xFF]) * size))


BREAKS = ["none", "flow", "gap", "psh", "syn", "frag", "junk", "short_payload", "window"]


def batch(mss: int, count: int, seq0: int, breaks: list[tuple[int, str]], last: int) -> tuple[bytes, int, int]:
    rows = []
    for k in range(count):
        kind = dict(breaks).get(k, "none")
        seq = (seq0 + k * mss) & 0xFFFFFFFF
        size = mss if k < count - 1 else last
        if kind == "flow":
            row = segment(seq, size, sport=40001)
        elif kind == "gap":
            row = segment((seq + 1) & 0xFFFFFFFF, size)
        elif kind == "psh":
            row = segment(seq, size, flags="PA")
        elif kind == "syn":
            row = segment(seq, size, flags="SA")
        elif kind == "frag":
            row = segment(seq, size, frag=1)
        elif kind == "junk":
            row = bytes(range(256)) * 8
        elif kind == "window":
            edited = bytearray(segment(seq, size))
            edited[14 + 20 + 14] ^= 1
            row = bytes(edited)
        else:
            row = segment(seq, size, ident=k)
        rows.append(PREFIX + row)
    stride = len(rows[0])
    rows = [r[:stride].ljust(stride, b"\0") if k < count - 1 else r[:stride] for k, r in enumerate(rows)]
    data = b"".join(rows)
    return data, stride, count


def python_runs(data: bytes, stride: int, count: int) -> list[tuple[int, int, bytes | None]]:
    mv = memoryview(data)
    return [(first, n, offload.merge(mv, stride, first, n, mss, 2) if n > 1 else None)
            for first, n, mss in offload.coalesce(mv, stride, count, 2)]


@settings(max_examples=300, deadline=None)
@given(st.integers(88, 1448), st.integers(1, 50), st.integers(0, 0xFFFFFFFF),
       st.lists(st.tuples(st.integers(0, 49), st.sampled_from(BREAKS)), max_size=4), st.integers(1, 1448))
def test_c_coalescing_equals_the_python_one(mss: int, count: int, seq0: int, breaks: list[tuple[int, str]],
                                            last: int) -> None:
    data, stride, count = batch(mss, count, seq0, breaks, min(last, mss))
    got = [(first, n, bytes(frame) if frame is not None else None)
           for first, n, frame in esp_native.coalesce(memoryview(bytearray(data)), stride, count, 2)]
    assert got == python_runs(data, stride, count)


def test_a_clean_batch_becomes_one_super_frame() -> None:
    data, stride, count = batch(1000, 44, 0xFFFFF000, [], 300)  # the sequence numbers wrap inside
    (first, n, frame), = esp_native.coalesce(memoryview(bytearray(data)), stride, count, 2)
    assert (first, n) == (0, 44) and frame is not None
    hdr = offload.parse_vnet_hdr(frame)
    assert (hdr.flags, hdr.gso_type, hdr.gso_size) == (offload.F_NEEDS_CSUM, offload.GSO_TCPV4, 1000)
    assert len(frame) == offload.VNET_HDR_LEN + 14 + 20 + 32 + 43 * 1000 + 300


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.integers(1, 2000))
def test_junk_never_crashes(junk: bytes, stride: int) -> None:
    count = -(-len(junk) // stride)
    for first, n, frame in esp_native.coalesce(memoryview(bytearray(junk)), stride, count, 2):
        assert 0 <= first < count and 1 <= n <= count - first and (frame is None) == (n == 1)
    assert [(f, n) for f, n, _ in esp_native.coalesce(memoryview(bytearray(junk)), stride, count, 2)] == \
        [(f, n) for f, n, _ in offload.coalesce(memoryview(junk), stride, count, 2)]


def test_counts_that_do_not_match_the_buffer_are_refused() -> None:
    data = memoryview(bytearray(1000))
    for stride, count, prefix in ((100, 11, 2), (100, 9, 2), (0, 1, 2), (100, 10, 9)):
        with pytest.raises(WireError, match="fit"):
            esp_native.coalesce(data, stride, count, prefix)
