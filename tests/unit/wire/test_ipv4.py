from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from softudc.wire import WireError
from softudc.wire.ipv4 import with_udp_checksum


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_matches_scapy(payload: bytes, garbage_csum: int) -> None:
    good = bytes(IP(src="10.100.0.11", dst="224.10.0.1", ttl=1) / UDP(sport=1798, dport=1798) / Raw(payload))
    broken = bytearray(good)
    broken[26:28] = garbage_csum.to_bytes(2, "big")  # e.g. a partial checksum from an offloading NIC
    assert with_udp_checksum(bytes(broken)) == good


@pytest.mark.parametrize("bad", [b"", bytes(20), bytes([0x45]) + bytes(8) + b"\x06" + bytes(18)])
def test_non_udp_is_refused(bad: bytes) -> None:
    with pytest.raises(WireError):
        with_udp_checksum(bad)
