from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.wire import WireError
from softudc.wire.relay import RelayAuthError, RelayMessage, RelayOp, build_relay, parse_relay

KEY = b"relay-key-" * 4
PACKET = bytes([0x45]) + bytes(19) + b"udp and payload"

messages = st.builds(
    RelayMessage,
    st.just(RelayOp.PACKET),
    st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
    st.integers(0, 2**64 - 1),
    st.integers(0, 16),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=200).map(lambda b: PACKET + b),
)


@given(messages)
def test_round_trip(msg: RelayMessage) -> None:
    assert parse_relay(build_relay(msg, KEY), KEY) == msg


def test_hello_round_trip() -> None:
    hello = RelayMessage(RelayOp.HELLO, ipaddress.IPv4Address("10.100.1.250"), 5, 0, 1, 123)
    assert parse_relay(build_relay(hello, KEY), KEY) == hello


@given(st.binary(max_size=120))
def test_garbage_raises_only_wire_error(buf: bytes) -> None:
    with contextlib.suppress(WireError):
        parse_relay(b"\x00\x03" + buf, KEY)


def test_wrong_key_and_any_flipped_bit_fail() -> None:
    raw = build_relay(RelayMessage(RelayOp.PACKET, ipaddress.IPv4Address("10.100.0.250"), 1, 0, 1, 2, PACKET), KEY)
    with pytest.raises(RelayAuthError):
        parse_relay(raw, b"another key")
    for i in range(4, len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x10
        with pytest.raises(WireError):
            parse_relay(bytes(bad), KEY)
