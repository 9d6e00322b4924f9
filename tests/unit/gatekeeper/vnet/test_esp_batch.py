"""Batched ESP against the one-packet reference (`softudc.wire.esp`): the same bytes either way.

A super-frame sealed by `SecurityAssociations.seal_segments` must open packet by packet with
`esp.open_` into exactly the segments `offload.segment` makes, and packets sealed one by one
with `esp.seal` must open in a batch (`open_run`, `open_into`) into the same payloads; anything
tampered, replayed or malformed ends the fast run where it sits and is dropped for its reason.
Every test runs on both engines: the C library (`esp_native`) and the Python fallback.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from gatekeeper.vnet import esp_batch
from gatekeeper.vnet.esp_sa import EspDrop, SecurityAssociations, mark_run
from gatekeeper.vnet.offload import GSO_TCPV4, VnetHdr, segment, segment_rows
from softudc.security.keys import VnetKeys
from softudc.security.replay import ReplayWindow
from softudc.wire import esp
from tests.unit.gatekeeper.vnet.dataplane_fakes import use_esp_engine

A, B = "10.100.0.11", "10.100.0.12"
ETHERIP = b"\x30\x0a"


@pytest.fixture(autouse=True, scope="module", params=["native", "python"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The module's tests once per engine (module scope: hypothesis allows no function-scoped fixture)."""
    yield from use_esp_engine(request.param)


def hosts(level: str = "conf") -> tuple[SecurityAssociations, SecurityAssociations]:
    a, b = SecurityAssociations(A), SecurityAssociations(B)
    for h in (a, b):
        h.set_keys(10, VnetKeys(level, {1: b"k" * 32}, 1))  # type: ignore[arg-type]
    return a, b


def super_frame(payload: bytes, seq: int = 1000) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2", id=7, flags="DF")
                 / TCP(sport=40000, dport=5201, seq=seq, ack=55, flags="PA", window=500,
                       options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
                 / payload)


def sealed(a: SecurityAssociations, frame: bytes, mss: int) -> tuple[list[bytes], int, bytes]:
    """The packets of one sealed super-frame, their size, and the whole buffer as sent."""
    seg = segment_rows(memoryview(frame), VnetHdr(1, GSO_TCPV4, 66, mss, 34, 16), ETHERIP, full_csum=True,
                       room=esp_batch.TRAILER_ROOM)
    out, size, used = a.seal_segments(10, seg)
    data = out.reshape(-1).tobytes()[:used]
    return [data[k:k + size] for k in range(0, used, size)], size, data


def reference(frame: bytes, mss: int) -> list[bytes]:
    buf, stride, count = segment(memoryview(frame), VnetHdr(1, GSO_TCPV4, 66, mss, 34, 16), ETHERIP, full_csum=True)
    return [buf[k * stride:(k + 1) * stride] for k in range(count)]


def open_one(key: esp.EspKey, packet: bytes) -> bytes:
    return esp.open_(key, packet, int.from_bytes(packet[8:16], "big"))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6000), st.integers(88, 1500), st.sampled_from(["conf", "auth"]))
def test_a_sealed_super_frame_opens_packet_by_packet_into_the_reference_segments(size: int, mss: int,
                                                                                  level: str) -> None:
    a, _ = hosts(level)
    frame = super_frame(bytes(range(256)) * (size // 256) + bytes(size % 256))
    packets, stride, _ = sealed(a, frame, mss)
    key = a._out[10].key
    assert [open_one(key, p) for p in packets] == reference(frame, mss)
    assert all(len(p) == stride for p in packets[:-1]) and len(packets[-1]) <= stride
    seqs = [struct.unpack_from("!I", p, 4)[0] for p in packets]
    assert seqs == list(range(seqs[0], seqs[0] + len(packets)))  # consecutive: one window step each
    for p in packets:  # every segment's TCP checksum is complete (scapy recomputes and compares)
        inner = Ether(open_one(key, p)[2:])
        want = inner[TCP].chksum
        del inner[TCP].chksum
        assert Ether(bytes(inner))[TCP].chksum == want


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(16, 1500), min_size=2, max_size=12), st.sampled_from(["conf", "auth"]))
def test_packets_sealed_one_by_one_open_in_a_batch(sizes: list[int], level: str) -> None:
    """Old sender, new receiver: equal-sized `esp.seal` packets (the last may be shorter)."""
    a, b = hosts(level)
    b.open(bytes(a.seal(10, ETHERIP + bytes(20))), A)  # the receiver keeps the SA with the first packet
    n = sizes[0]
    payloads = [ETHERIP + bytes([k]) * n for k in range(len(sizes) - 1)] + [ETHERIP + b"\xee" * min(n, sizes[-1])]
    packets = [bytes(a.seal(10, p)) for p in payloads]
    stride = len(packets[0])
    out = memoryview(bytearray(stride * len(packets)))
    vnet, lengths = b.open_run(memoryview(b"".join(packets)), stride, A, out)
    assert vnet == 10 and lengths == [len(p) for p in payloads]
    assert bytes(out[:sum(lengths)]) == b"".join(payloads)
    with pytest.raises(EspDrop, match="esp_replay"):  # the window moved past all of them
        b.open(packets[-1], A)


def test_a_tampered_packet_ends_the_run_and_is_dropped_alone() -> None:
    a, b = hosts()
    b.open(bytes(a.seal(10, ETHERIP + bytes(20))), A)
    packets, stride, data = sealed(a, super_frame(bytes(5000)), 1000)
    bad = bytearray(data)
    bad[2 * stride + 40] ^= 1
    out = memoryview(bytearray(len(data)))
    vnet, lengths = b.open_run(memoryview(bad), stride, A, out)
    assert vnet == 10 and len(lengths) == 2
    with pytest.raises(EspDrop, match="esp_auth_failed"):
        b.open_into(memoryview(bad)[2 * stride:3 * stride], A, out)
    rest = [b.open_into(memoryview(p), A, out)[1] for p in packets[3:]]
    assert rest == [len(r) for r in reference(super_frame(bytes(5000)), 1000)[3:]]


def test_a_replayed_or_reordered_batch_is_not_a_run(engine: str) -> None:
    a, b = hosts()
    b.open(bytes(a.seal(10, ETHERIP + bytes(20))), A)
    packets, stride, data = sealed(a, super_frame(bytes(3000)), 1000)
    out = memoryview(bytearray(len(data)))
    assert len(b.open_run(memoryview(data), stride, A, out)[1]) == len(packets)
    assert b.open_run(memoryview(data), stride, A, out) == (-1, [])  # replayed: below the window
    later, _, _ = sealed(a, super_frame(bytes(3000)), 1000)
    assert b.open_run(memoryview(b"".join(later)), stride, "10.9.9.9", out) == (-1, [])  # no SA for that sender
    swapped = [later[1], later[0], *later[2:]]
    _, lengths = b.open_run(memoryview(b"".join(swapped)), stride, A, out)
    # Python: not consecutive, so not a run; C: the run ends where the order breaks.
    assert len(lengths) == (1 if engine == "native" else 0)
    for p in swapped[len(lengths):]:  # the rest one by one: each still fresh, opened once
        assert b.open_into(memoryview(p), A, out)[0] == 10
    for p in swapped:  # and all of them replays now
        with pytest.raises(EspDrop, match="esp_replay"):
            b.open_into(memoryview(p), A, out)


def test_open_into_accepts_long_padding_from_another_sender() -> None:
    """RFC 4303 allows up to 255 bytes of padding; our senders use at most 3."""
    a, b = hosts()
    b.open(bytes(a.seal(10, ETHERIP + bytes(20))), A)
    sa_key = a._out[10].key
    spi, seq = a._out[10].spi, a._reserve(10, 1)[1]
    payload = ETHERIP + bytes(range(30))
    plain = payload + bytes(range(1, 11)) + bytes((10, esp.NEXT_HEADER_ETHERIP))
    iv = seq.to_bytes(8, "big")
    packet = struct.pack("!II", spi, seq) + iv + sa_key.aead.encrypt(sa_key.salt + iv, plain,
                                                                     struct.pack("!III", spi, 0, seq))
    out = memoryview(bytearray(100))
    assert b.open_into(memoryview(packet), A, out) == (10, len(payload))
    assert bytes(out[:len(payload)]) == payload


@given(st.integers(0, 3000), st.integers(1, 3000), st.integers(1, 2000), st.sampled_from([64, 1024]))
def test_mark_run_equals_one_update_per_number(top: int, gap: int, count: int, size: int) -> None:
    one, run = ReplayWindow(size=size), ReplayWindow(size=size)
    for w in (one, run):
        for seq in (top, top - 3, top - 40):
            if seq > 0:
                w.update(seq)
    first = max(1, top + gap - 50)  # sometimes starts inside the window: the slow path
    for seq in range(first, first + count):
        one.update(seq)
    mark_run(run, first, count)
    assert (run.top, run.bitmap) == (one.top, one.bitmap)


def test_consecutive_wraps_past_two_to_the_32() -> None:
    assert esp_batch.consecutive(np.array([0xFFFFFFFE, 0xFFFFFFFF, 0, 1], dtype=">u4"))
    assert not esp_batch.consecutive(np.array([5, 6, 8], dtype=">u4"))


def test_a_sequence_block_running_out_mid_burst_splits_the_numbers_not_the_packets() -> None:
    from softudc.security.seqstore import SequenceStore

    a = SecurityAssociations(A, SequenceStore(None, block=7))
    a.set_keys(10, VnetKeys("conf", {1: b"k" * 32}, 1))
    frame = super_frame(bytes(20000))
    packets, _, _ = sealed(a, frame, 1000)
    key = a._out[10].key
    assert [open_one(key, p) for p in packets] == reference(frame, 1000)
    seqs = [struct.unpack_from("!I", p, 4)[0] for p in packets]
    assert len(set(seqs)) == len(seqs) and seqs == sorted(seqs)


def test_rows_without_room_for_the_trailer_are_refused() -> None:
    seg = segment_rows(memoryview(super_frame(bytes(3000))), VnetHdr(1, GSO_TCPV4, 66, 1000, 34, 16), ETHERIP)
    assert seg.rows.shape[1] == seg.stride == 2 + 66 + 1000 < esp.padded_len(seg.stride)
    with pytest.raises(ValueError, match="no room"):
        esp_batch.add_trailers(seg)
