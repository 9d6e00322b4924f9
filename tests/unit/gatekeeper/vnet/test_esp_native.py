"""The C ESP engine (gatekeeper/vnet/native/esp_burst.c) against the reference (`softudc.wire.esp`).

A packet sealed in C opens with `esp.open_`, a packet sealed by `esp.seal` opens in C, byte for
byte the same either way, for every payload size up to the MTU and sequence numbers across the
32-bit boundary (the ESN high half is in the AAD, never on the wire). Whatever the network can
send (a bad tag, a truncated, misaligned or oversized packet, random bytes) is refused with an
error and never written past the caller's buffer.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from gatekeeper.vnet import esp_native, offload
from gatekeeper.vnet.esp_native import NativeKey
from gatekeeper.vnet.esp_sa import SecurityAssociations
from gatekeeper.vnet.offload import GSO_TCPV4, OffloadError, VnetHdr, segment
from softudc.security.keys import VnetKeys
from softudc.security.seqstore import SequenceStore
from softudc.wire import esp
from softudc.wire.errors import WireError

SPI = 0x0A000101
MTU = 1500
SEQS = st.one_of(st.integers(1, (1 << 64) - 1), st.integers((1 << 32) - 3, (1 << 32) + 3),
                 st.integers((5 << 32) - 2, (5 << 32) + 2))
LEVELS = st.sampled_from(["conf", "auth"])
KEYS = st.sampled_from([16, 24, 32])


@pytest.fixture(autouse=True, scope="module")
def built() -> None:
    assert esp_native.engine() == "native", f"the native ESP library is not built: {esp_native.WHY}"


def keys(level: str, keylen: int = 32) -> tuple[esp.EspKey, NativeKey]:
    key = esp.EspKey(level, bytes(range(keylen)), b"salt")  # type: ignore[arg-type]
    nk = esp_native.native_key(key)
    assert nk is not None
    return key, nk


def c_seal(nk: NativeKey, seq: int, payload: bytes) -> bytes:
    out = bytearray(esp.HEADER_LEN + esp.IV_LEN + esp.padded_len(len(payload)) + esp.ICV_LEN)
    assert nk.seal_rows(SPI, seq, payload, max(len(payload), 1), 1, (len(payload), len(payload)), out,
                        len(out)) == len(out)
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MTU), SEQS, LEVELS, KEYS)
def test_c_and_the_reference_seal_and_open_each_others_packets(payload: bytes, seq: int, level: str,
                                                              keylen: int) -> None:
    key, nk = keys(level, keylen)
    sealed = c_seal(nk, seq, payload)
    assert sealed == esp.seal(key, SPI, seq, payload)  # the same bytes: same nonce, AAD, trailer
    assert esp.open_(key, sealed, seq) == payload
    out = bytearray(len(sealed))
    n = nk.open_one(esp.seal(key, SPI, seq, payload), seq, out)
    assert bytes(out[:n]) == payload


@settings(max_examples=100, deadline=None)
@given(st.integers(0, MTU), st.integers(1, 60), st.integers(0, MTU), SEQS, LEVELS)
def test_a_burst_sealed_in_c_opens_packet_by_packet(size: int, count: int, last: int, seq0: int, level: str) -> None:
    last = min(last, size)
    seq0 = min(seq0, (1 << 64) - count)
    key, nk = keys(level)
    width = size + 7
    rows = np.frombuffer(os.urandom(width * count), dtype=np.uint8).reshape(count, width)
    ostride = esp.HEADER_LEN + esp.IV_LEN + esp.padded_len(size) + esp.ICV_LEN
    out = np.zeros((count, ostride), dtype=np.uint8)
    used = nk.seal_rows(SPI, seq0, rows, width, count, (size, last), out, ostride)
    data = out.tobytes()[:used]
    for k in range(count):
        packet = data[k * ostride:(k + 1) * ostride]
        want = rows[k, :size if k < count - 1 else last].tobytes()
        assert esp.open_(key, packet, seq0 + k) == want
        assert struct.unpack_from("!II", packet) == (SPI, (seq0 + k) & 0xFFFFFFFF)
    assert used == (count - 1) * ostride + esp.HEADER_LEN + esp.IV_LEN + esp.padded_len(last) + esp.ICV_LEN


@settings(max_examples=100, deadline=None)
@given(st.integers(0, MTU), st.integers(1, 40), SEQS, LEVELS, st.data())
def test_a_batch_opens_in_c_up_to_the_first_bad_packet(size: int, count: int, seq0: int, level: str,
                                                      data: st.DataObject) -> None:
    seq0 = min(seq0, (1 << 64) - count)
    key, nk = keys(level)
    payloads = [bytes([k]) * size for k in range(count)]
    packets = [bytearray(esp.seal(key, SPI, seq0 + k, p)) for k, p in enumerate(payloads)]
    bad = data.draw(st.integers(0, count))  # == count: none
    if bad < count:
        how = data.draw(st.sampled_from(["tag", "body", "spi", "seq", "iv"]))
        offset = {"tag": len(packets[bad]) - 1, "body": 17, "spi": 3, "seq": 7, "iv": 9}[how]
        packets[bad][offset] ^= 0x40
    stride = len(packets[0])
    out = memoryview(bytearray(stride * count))
    lengths = nk.open_burst(SPI, seq0, memoryview(bytearray(b"".join(packets))), stride, out)
    assert lengths == [size] * min(bad, count)
    assert bytes(out[:sum(lengths)]) == b"".join(payloads[:len(lengths)])


def test_a_short_last_packet_and_a_wrapping_sequence_open_in_one_batch() -> None:
    key, nk = keys("conf")
    seq0 = (1 << 32) - 2  # the low half wraps inside the batch; the high half goes into the AAD
    payloads = [b"a" * 100, b"b" * 100, b"c" * 100, b"d" * 31]
    batch = b"".join(esp.seal(key, SPI, seq0 + k, p) for k, p in enumerate(payloads))
    out = memoryview(bytearray(1000))
    assert nk.open_burst(SPI, seq0, memoryview(bytearray(batch)), len(esp.seal(key, SPI, 1, payloads[0])),
                         out) == [100, 100, 100, 31]
    assert bytes(out[:331]) == b"".join(payloads)


@pytest.mark.parametrize("level", ["conf", "auth"])
def test_bad_packets_are_refused_with_the_reference_errors(level: str) -> None:
    key, nk = keys(level)
    good = esp.seal(key, SPI, 7, b"x" * 50)
    out = bytearray(2 * len(good))
    cases: list[tuple[bytes, int, type[Exception], str]] = [
        (good[:-1], 7, WireError, "aligned"),  # truncated by one byte
        (good[:35], 7, WireError, "shorter"),  # below header + IV + 4 + tag
        (b"", 7, WireError, "shorter"),
        (good, 8, WireError, "sequence"),  # not the number the window inferred
        (good, 7 + (1 << 32), esp.AuthError, "ICV"),  # same low half, other high half: the AAD differs
        (good[:-1] + bytes([good[-1] ^ 1]), 7, esp.AuthError, "ICV"),
        (good[:20] + bytes([good[20] ^ 1]) + good[21:], 7, esp.AuthError, "ICV"),
        (bytes(70000), 0, WireError, "shorter"),  # longer than any UDP datagram
    ]
    for packet, seq, error, match in cases:
        with pytest.raises(error, match=match):
            nk.open_one(packet, seq, out)
    with pytest.raises(WireError, match="too small"):  # never written past the caller's buffer
        nk.open_one(good, 7, bytearray(len(good) - 33))


def test_a_verified_packet_with_a_bad_trailer_is_refused() -> None:
    key, nk = keys("conf")
    iv = (9).to_bytes(8, "big")
    aad = struct.pack("!III", SPI, 0, 9)
    for plain, match in ((b"y" * 10 + b"\x01\x02", "next header"), (b"y" * 9 + b"\x09\x05\x61", "padding"),
                         (b"y" * 10 + b"\x0b\x61", "padding")):
        packet = struct.pack("!II", SPI, 9) + iv + key.aead.encrypt(key.salt + iv, plain, aad)
        with pytest.raises(WireError, match=match):
            nk.open_one(packet, 9, bytearray(100))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * MTU), st.integers(0, (1 << 64) - 1), st.integers(1, 3000))
def test_random_bytes_never_open_and_never_crash(junk: bytes, seq: int, stride: int) -> None:
    _, nk = keys("conf")
    out = memoryview(bytearray(len(junk)))
    with pytest.raises(WireError):
        nk.open_one(junk, seq, out)
    assert nk.open_burst(int.from_bytes(junk[:4], "big"), seq, memoryview(bytearray(junk)), stride, out) == []


def test_seal_refuses_lengths_that_do_not_fit() -> None:
    _, nk = keys("conf")
    rows = np.zeros((4, 100), dtype=np.uint8)
    out = np.zeros((4, 136), dtype=np.uint8)  # 16 + 104 (100 padded) + 16 per packet
    assert nk.seal_rows(SPI, 1, rows, 100, 4, (100, 100), out, 136) == 4 * 136
    for lengths, ostride, cap_rows, match in (((100, 101), 136, 4, "fit"), ((101, 10), 136, 4, "fit"),
                                              ((100, 100), 135, 4, "fit"), ((100, 100), 136, 3, "too small")):
        with pytest.raises(WireError, match=match):
            nk.seal_rows(SPI, 1, rows, 100, 4, lengths, out[:cap_rows], ostride)
    with pytest.raises(WireError, match="fit"):  # the sequence number would wrap past 2^64 inside the burst
        nk.seal_rows(SPI, (1 << 64) - 2, rows, 100, 4, (100, 100), out, 136)


def test_the_engine_is_reported_and_can_be_forced_to_python() -> None:
    assert SecurityAssociations("10.0.0.1").engine == "native"
    code = "from gatekeeper.vnet import esp_native; print(esp_native.engine(), esp_native.WHY)"
    forced = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SOFTUDC_ESP_ENGINE": "python"},
                            capture_output=True, text=True, check=True).stdout
    assert forced.split()[0] == "python" and "SOFTUDC_ESP_ENGINE" in forced
    elsewhere = {**os.environ, "SOFTUDC_ESP_NATIVE_LIB": "/nonexistent.so"}
    missing = subprocess.run([sys.executable, "-c", code], env=elsewhere, capture_output=True, text=True,
                             check=True).stdout
    assert missing.split()[0] == "python" and "build-native.sh" in missing


def test_sas_seal_and_open_between_engines() -> None:
    """A host on the C engine and one on the Python engine share a VNET (old and new gatekeepers)."""
    a, b = SecurityAssociations("10.100.0.11"), SecurityAssociations("10.100.0.12")
    for h in (a, b):
        h.set_keys(10, VnetKeys("conf", {1: b"k" * 32}, 1))
    payload = b"\x30\x0a" + bytes(range(200))
    assert b.open(bytes(a.seal(10, payload)), "10.100.0.11") == (10, payload)  # C seals, Python opens (fresh SA)
    lib = esp_native._lib
    esp_native._lib = None
    try:
        packet = a.seal(10, payload)  # Python seals
    finally:
        esp_native._lib = lib
    out = memoryview(bytearray(300))
    assert b.open_into(memoryview(packet), "10.100.0.11", out) == (10, len(payload))  # C opens
    assert bytes(out[:len(payload)]) == payload


def tso_frame(payload: bytes, flags: str, ident: int, seq: int, options: bool) -> bytes:
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))] if options else []
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2", id=ident, flags="DF")
                 / TCP(sport=40000, dport=5201, seq=seq, ack=55, flags=flags, window=500, options=opts)
                 / payload)


def hosts_pair(level: str, block: int = 1000) -> tuple[SecurityAssociations, SecurityAssociations]:
    a, b = (SecurityAssociations("10.100.0.11", SequenceStore(None, block=block)),
            SecurityAssociations("10.100.0.11", SequenceStore(None, block=block)))
    for h in (a, b):
        h.set_keys(10, VnetKeys(level, {1: b"k" * 32}, 1))  # type: ignore[arg-type]
    return a, b


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 65000), st.integers(88, 1500), st.sampled_from(["A", "PA", "FPA", "CA", "CPA", "EA"]),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.booleans(), LEVELS, st.sampled_from([1000, 7]))
def test_a_super_frame_cut_and_sealed_in_c_equals_the_python_engine(size: int, mss: int, flags: str, ident: int,
                                                                    seq: int, options: bool, level: str,
                                                                    block: int) -> None:
    """The same packets, byte for byte, as offload.segment_rows + seal_segments (which tests in
    test_offload.py / test_esp_batch.py hold to the reference segmentation and `esp.seal`)."""
    frame = memoryview(bytearray(tso_frame(bytes(range(256)) * (size // 256) + bytes(size % 256), flags, ident,
                                           seq, options)))
    hdr = VnetHdr(1, GSO_TCPV4, 0, mss, 34, 16)
    c, py = hosts_pair(level, block)  # block 7: sequence blocks run out mid-frame
    packets, size_c, used, count = c.seal_super_frame(10, frame, hdr, b"\x30\x0a")
    lib = esp_native._lib
    esp_native._lib = None
    try:
        want, size_py, used_py, count_py = py.seal_super_frame(10, frame, hdr, b"\x30\x0a")
    finally:
        esp_native._lib = lib
    assert (size_c, used, count) == (size_py, used_py, count_py)
    assert packets.reshape(-1).tobytes()[:used] == want.reshape(-1).tobytes()[:used]
    key = c._out[10].key
    reference, stride, n = segment(frame, hdr, b"\x30\x0a", full_csum=True)
    data = packets.reshape(-1).tobytes()[:used]
    opened = [esp.open_(key, data[k:k + size_c], int.from_bytes(data[k + 8:k + 16], "big"))
              for k in range(0, used, size_c)]
    assert n == count and opened == [reference[k * stride:(k + 1) * stride] for k in range(n)]


@pytest.mark.parametrize("frame, mss, match", [
    (tso_frame(b"x" * 3000, "A", 1, 1, False)[:30], 1000, "IPv4"),  # truncated inside the IPv4 header
    (tso_frame(b"", "A", 1, 1, False), 1000, "payload"),
    (tso_frame(b"x" * 3000, "A", 1, 1, False), 87, "mss"),
    (tso_frame(b"x" * 3000, "A", 1, 1, False), 65536, "mss"),
    (tso_frame(b"x" * 3000, "A", 1, 1, False)[:12] + b"\x86\xdd" + bytes(60), 1000, "IPv4"),
    (bytes(14) + b"\x45" + bytes(60), 1000, "IPv4"),  # no ethertype, no TCP
])
def test_super_frames_that_cannot_be_cut_are_refused(frame: bytes, mss: int, match: str) -> None:
    a, _ = hosts_pair("conf")
    with pytest.raises(OffloadError, match=match):
        a.seal_super_frame(10, memoryview(bytearray(frame)), VnetHdr(1, GSO_TCPV4, 0, mss, 34, 16), b"\x30\x0a")
    with pytest.raises(OffloadError, match="gso_type"):
        a.seal_super_frame(10, memoryview(bytearray(frame)), VnetHdr(1, 3, 0, mss, 34, 16), b"\x30\x0a")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=MTU), st.integers(0, 80), st.sampled_from([16, 6]), SEQS, LEVELS)
def test_a_frame_with_a_partial_checksum_is_completed_and_sealed_as_python_does(body: bytes, start: int,
                                                                                 offset: int, seq: int,
                                                                                 level: str) -> None:
    """One TAP frame with NEEDS_CSUM: the checksum completed in C (as `offload.complete_csum`
    does it), then sealed, in one call: the same packet as the Python engine's."""
    payload = b"\x30\x0a" + body
    key, nk = keys(level)
    if start + offset + 2 > len(payload):
        with pytest.raises(WireError, match="fit"):
            nk.seal_frame(SPI, seq, bytearray(payload), (start, offset))
        return
    want = bytearray(payload)
    offload.complete_csum(want, start, offset, len(want))
    got_payload = bytearray(payload)
    sealed = nk.seal_frame(SPI, seq, memoryview(got_payload), (start, offset))
    assert got_payload == want  # completed in place
    assert bytes(sealed) == esp.seal(key, SPI, seq, bytes(want))
    assert bytes(nk.seal_frame(SPI, seq, payload)) == esp.seal(key, SPI, seq, payload)  # no checksum to complete


def test_a_udp_checksum_that_sums_to_zero_goes_out_as_all_ones() -> None:
    _, nk = keys("conf")
    payload = bytearray(b"\x30\x0a" + bytes(8) + b"\xff\xff" + bytes(4))  # sums to 0xFFFF: complement 0
    nk.seal_frame(SPI, 1, payload, (2, 6))
    assert payload[8:10] == b"\xff\xff"
    with pytest.raises(WireError, match="writable"):
        nk.seal_frame(SPI, 1, bytes(payload), (2, 6))
