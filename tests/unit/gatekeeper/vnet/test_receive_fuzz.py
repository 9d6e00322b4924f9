"""Hypothesis over the whole receive path, not only the parsers (audit R2: "fuzz the receive
path"): structured and mutated datagrams, alone and in equal-sized batches that reach the
coalescing code, through the real UDP, raw and ESP loops. Nothing may raise (an `error_*` drop
means the loop guard had to catch something) and every datagram is accounted for: delivered,
handed to VARP, or dropped under a named reason."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.vnet.esp_sa import SecurityAssociations
from softudc.security.keys import VnetKeys
from tests.unit.gatekeeper.vnet.dataplane_fakes import LOCAL, PEER, Datagram, FakeReceiver, eth

KEYS = VnetKeys("conf", {1: bytes(range(32))}, 1)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_rx() -> FakeReceiver:
    rx = FakeReceiver()
    rx.add_port(5, offload=True, sink=True)
    rx.add_port(6, offload=False, sink=True)
    rx.add_port(7, offload=True, transport="raw", sink=True)
    rx.add_port(8, security="conf", sink=True)
    rx.sas.set_keys(8, KEYS)
    return rx


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """An Ethernet frame that starts as a valid, coalescable IPv4/TCP segment (ACK only) and gets
    zero or more of the header fields an attacker controls changed, then maybe cut short: near
    misses reach the deep code (coalesce, merge, segment offsets) that random bytes never do."""
    f = {"ihl": 5, "data_offset": 5, "proto": 6, "flags": 0x10, "frag": 0x4000}
    fb = {"ethertype": b"\x08\x00", "src_mac": bytes.fromhex("020000000001")}  # the fields that are bytes
    big = st.sampled_from([600, 1000, 1386])  # most datagrams are big enough to batch
    payload = draw(st.one_of(big, big, big, st.integers(0, 1400)))
    fields = [*sorted([*f, *fb]), "total", "cut"]
    # One main change (so each field is changed alone often), maybe a couple more with it.
    mutations = {draw(st.sampled_from([*fields, "none"]))} | set(draw(st.lists(st.sampled_from(fields), max_size=2)))
    choices: dict[str, st.SearchStrategy[int]] = {
        "ihl": st.integers(0, 15), "data_offset": st.sampled_from([0, 1, 2, 3, 4, 6, 15]),
        "proto": st.sampled_from([17, 1, 0, 255]),
        "flags": st.integers(0, 255), "frag": st.sampled_from([0x2000, 0x0001, 0x3FFF]),
    }
    byte_choices: dict[str, st.SearchStrategy[bytes]] = {
        "ethertype": st.sampled_from([b"\x86\xdd", b"\x08\x06", b"\x81\x00"]),
        "src_mac": st.sampled_from([bytes.fromhex("030000000001"), bytes(6)]),
    }
    for m in mutations:
        if m in choices:
            f[m] = draw(choices[m])
        elif m in byte_choices:
            fb[m] = draw(byte_choices[m])
    ihl, data_offset = f["ihl"], f["data_offset"]
    total = ihl * 4 + data_offset * 4 + payload
    if "total" in mutations:
        total = draw(st.integers(0, 0xFFFF))
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, 7, f["frag"], 64, f["proto"], 0,
                     b"\xc0\xa8\x01\x01", b"\xc0\xa8\x01\x02") + bytes(max(0, ihl * 4 - 20))
    seq = draw(st.integers(0, 0xFFFFFFFF))
    tcp = struct.pack("!HHIIBBHHH", 1, 2, seq, 0, data_offset << 4, f["flags"], 100, 0, 0) + bytes(
        max(0, data_offset * 4 - 20))
    frame = eth(src=fb["src_mac"])[:12] + fb["ethertype"] + ip + tcp + bytes(payload)
    if "cut" in mutations:
        frame = frame[:draw(st.integers(0, len(frame)))]
    return frame


@st.composite
def udp_messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["frame"] * 8 + ["varp", "garbage"]))
    if kind == "garbage":
        return draw(st.binary(min_size=0, max_size=2000))
    if kind == "varp":
        return b"\x00\x01" + draw(st.binary(max_size=120))
    vnet = draw(st.sampled_from([5] * 6 + [6, 7, 8, 9, 0, 0xFFF]))
    flags = draw(st.sampled_from([0, 0, 0, 1, 2, 0xFFFF]))
    version = draw(st.sampled_from([3] * 6 + [0, 4]))
    return struct.pack("!HHH", 2, flags, version << 12 | vnet) + draw(frames())


def batches(items: st.SearchStrategy[bytes], prefix: int) -> st.SearchStrategy[list[bytes]]:
    """One datagram alone, or repeated into an equal-sized batch (with consecutive TCP sequence
    numbers where it is a TCP segment: that is what reaches `coalesce` and `merge`). `prefix`:
    the bytes before the Ethernet header."""
    return st.tuples(items, st.integers(1, 8), st.booleans()).map(lambda t: _repeat(*t, prefix))


def _repeat(first: bytes, count: int, shorter_last: bool, prefix: int) -> list[bytes]:
    seq_at = prefix + 14 + 20 + 4  # where the TCP sequence number is behind an option-less IPv4 header
    out = []
    for i in range(count):
        d = bytearray(first)
        if len(d) >= seq_at + 4:
            seq = (int.from_bytes(d[seq_at:seq_at + 4], "big") + i * max(1, len(d) - prefix - 54)) & 0xFFFFFFFF
            d[seq_at:seq_at + 4] = seq.to_bytes(4, "big")
        out.append(bytes(d))
    if shorter_last and count > 1 and len(out[-1]) > 1:
        out[-1] = out[-1][:len(out[-1]) // 2]
    return out


def accounted(rx: FakeReceiver) -> int:
    return rx.drop_total() + rx.rx_datagrams() + rx.varp_rx


def assert_no_errors(rx: FakeReceiver) -> None:
    errors = {f"{p}/{r}": n for p, c in rx.drops.items() for r, n in c.items() if r.startswith("error_")}
    assert errors == {}


@pytest.mark.adversarial
@FUZZ
@given(st.lists(batches(udp_messages(), 6), min_size=1, max_size=4))
def test_r2_udp_receive_path_never_raises_and_counts_every_datagram(groups: list[list[bytes]]) -> None:
    rx = make_rx()
    try:
        items: list[tuple[bytes, str] | None] = []
        for g in groups:
            items += [(d, PEER) for d in g if d] + [None]
        rx.run_udp(items)
        assert_no_errors(rx)
        assert accounted(rx) == sum(1 for i in items if i is not None)
    finally:
        rx.close()


@st.composite
def raw_packets(draw: st.DrawFn) -> bytes:
    """What a raw protocol-97 socket returns: an outer IPv4 header (any IHL), EtherIP, a frame."""
    ihl = draw(st.sampled_from([5] * 6 + [0, 1, 6, 15]))
    vnet = draw(st.sampled_from([7] * 6 + [5, 8, 9, 0]))
    version = draw(st.sampled_from([3] * 6 + [0]))
    inner = struct.pack("!H", version << 12 | vnet) + draw(frames())
    outer = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(inner), draw(st.integers(0, 0xFFFF)), 0, 64, 97,
                        0, bytes(map(int, PEER.split("."))), bytes(map(int, LOCAL.split("."))))
    pkt = outer + bytes(max(0, ihl * 4 - 20)) + inner
    if draw(st.integers(0, 9)) == 0:
        pkt = pkt[:draw(st.integers(1, len(pkt)))]
    return pkt


@pytest.mark.adversarial
@FUZZ
@given(st.lists(batches(raw_packets(), 22), min_size=1, max_size=4))
def test_r2_raw_receive_path_never_raises_and_counts_every_packet(groups: list[list[bytes]]) -> None:
    rx = make_rx()
    try:
        items: list[tuple[bytes, str] | None] = []
        for g in groups:
            items += [(d, PEER) for d in g] + [None]
        rx.run_raw(items)
        assert_no_errors(rx)
        assert accounted(rx) == sum(1 for i in items if i is not None)
    finally:
        rx.close()


@pytest.mark.adversarial
@FUZZ
@given(st.lists(st.tuples(st.one_of(st.binary(max_size=64),
                                    st.builds(lambda v, f: struct.pack("!H", 0x3000 | v) + f,
                                              st.sampled_from([8, 8, 5, 9]), frames())),
                          st.integers(1, 6), st.booleans()), min_size=1, max_size=4),
       st.binary(max_size=200))
def test_r3_esp_receive_path_never_raises_and_counts_every_packet(groups: list[tuple[bytes, int, bool]],
                                                                  garbage: bytes) -> None:
    """Authentic payloads of any shape from a key holder (R3), in batches, plus forged packets."""
    rx = make_rx()
    tx = SecurityAssociations(PEER)
    tx.set_keys(8, KEYS)
    try:
        items: list[Datagram | None] = [(garbage, PEER), None] if garbage else []
        for payload, count, shorter_last in groups:
            sealed = [tx.seal(8, p) for p in _repeat(payload, count, shorter_last, 2)]
            items += [(s, PEER) for s in sealed] + [None]
        rx.run_esp(items)
        assert_no_errors(rx)
        assert accounted(rx) == sum(1 for i in items if i is not None)
    finally:
        rx.close()
