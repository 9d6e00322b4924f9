from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.wire import MessageHeader, MsgId, WireError, build_header, parse_header


@given(st.sampled_from(MsgId), st.integers(0, 0xFFFF))
def test_round_trip(msg_id: MsgId, opcode: int) -> None:
    assert parse_header(build_header(MessageHeader(msg_id, opcode))) == MessageHeader(msg_id, opcode)


@pytest.mark.parametrize("raw", [b"", b"\x00\x01\x00", b"\x00\x09\x00\x00", b"\xff\xff\x00\x00"])
def test_short_or_unknown_is_refused(raw: bytes) -> None:
    with pytest.raises(WireError):
        parse_header(raw)
