from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.wire import WireError
from softudc.wire.udpframe import (
    FLAG_CSUM_PARTIAL,
    FRAME_PREFIX_LEN,
    MAX_FRAME_LEN,
    FrameMessage,
    build_frame_message,
    frame_prefix,
    parse_frame_message,
)

frames = st.binary(min_size=14, max_size=2000)


@given(st.integers(1, 4094), frames, st.sampled_from([0, FLAG_CSUM_PARTIAL]))
def test_round_trip(vnet: int, frame: bytes, flags: int) -> None:
    msg = parse_frame_message(build_frame_message(FrameMessage(vnet, frame, flags)))
    assert (msg.vnet, bytes(msg.frame), msg.flags) == (vnet, frame, flags)


@given(st.binary(max_size=64))
def test_garbage_raises_only_wire_error(buf: bytes) -> None:
    try:
        msg = parse_frame_message(buf)
    except WireError:
        return
    assert 1 <= msg.vnet <= 4094 and len(msg.frame) >= 14


def test_prefix_layout_matches_design() -> None:
    assert frame_prefix(10) == bytes([0, 2, 0, 0, 0x30, 10])
    assert len(frame_prefix(10)) == FRAME_PREFIX_LEN


def test_unknown_flags_are_refused() -> None:
    buf = bytes([0, 2, 0x80, 0, 0x30, 1]) + bytes(14)
    with pytest.raises(WireError, match="unknown flags"):
        parse_frame_message(buf)


def test_truncated_and_oversized_frames_are_refused() -> None:
    with pytest.raises(WireError, match="need at least 14"):
        parse_frame_message(frame_prefix(1) + bytes(13))
    with pytest.raises(WireError, match="exceeds"):
        build_frame_message(FrameMessage(1, bytes(MAX_FRAME_LEN + 1)))


def test_vnet_zero_is_not_a_udp_frame() -> None:
    with pytest.raises(WireError, match="reserved"):
        parse_frame_message(bytes([0, 2, 0, 0, 0x30, 0]) + bytes(14))


@given(st.binary(max_size=40))
def test_peek_agrees_with_parse(buf: bytes) -> None:
    from softudc.wire.udpframe import peek_frame

    buf = b"\x00\x02" + buf
    try:
        msg = parse_frame_message(buf)
    except WireError:
        with pytest.raises(WireError):
            peek_frame(buf, len(buf))
        return
    assert peek_frame(buf, len(buf)) == (msg.vnet, msg.flags)
