from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.wire import WireError
from softudc.wire.varp import (
    TRAILER_LEN,
    VARP_LEN,
    VarpMessage,
    VarpOp,
    VarpTrailer,
    build_varp,
    parse_varp,
)

addresses = st.one_of(
    st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
)
trailers = st.none() | st.builds(
    VarpTrailer, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=16)
)
messages = st.builds(
    VarpMessage,
    st.sampled_from(VarpOp),
    st.integers(0, 2**128 - 1),
    st.binary(min_size=6, max_size=6),
    addresses,
    trailers,
)


@given(messages)
def test_round_trip(msg: VarpMessage) -> None:
    assert parse_varp(build_varp(msg)) == msg


@given(st.binary(max_size=80))
def test_garbage_raises_only_wire_error(buf: bytes) -> None:
    try:
        msg = parse_varp(buf)
    except WireError:
        return
    assert len(msg.vmac) == 6


def test_layout_is_xen_g3_varphdr() -> None:
    msg = VarpMessage(VarpOp.ANNOUNCE, 0x97, bytes.fromhex("525400000011"),
                      ipaddress.IPv4Address("10.100.0.2"))
    raw = build_varp(msg)
    assert len(raw) == VARP_LEN
    assert raw[:4] == b"\x00\x01\x00\x02"
    assert raw[4:20] == (0x97).to_bytes(16, "big")
    assert raw[20:26] == bytes.fromhex("525400000011")
    assert raw[26] == 2 and raw[27:31] == bytes([10, 100, 0, 2]) and not any(raw[31:43])


def test_trailer_has_its_place() -> None:
    t = VarpTrailer(7, 123456789, bytes(range(16)))
    msg = VarpMessage(VarpOp.REQUEST, 5, bytes(6), ipaddress.IPv4Address("1.2.3.4"), t)
    assert len(build_varp(msg)) == VARP_LEN + TRAILER_LEN


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\x00\x01\x00\x03" + bytes(39), "unknown opcode"),
        (b"\x00\x01\x00\x01" + bytes(38), "42 bytes"),
        (b"\x00\x01\x00\x01" + bytes(22) + b"\x07" + bytes(16), "address family 7"),
        (b"\x00\x01\x00\x01" + bytes(22) + b"\x02" + bytes(5) + b"\x01" + bytes(10), "padding"),
        (b"\x00\x02\x00\x01" + bytes(39), "expected 1"),
    ],
)
def test_bad_messages_name_the_field(raw: bytes, error: str) -> None:
    with pytest.raises(WireError, match=error):
        parse_varp(raw)
