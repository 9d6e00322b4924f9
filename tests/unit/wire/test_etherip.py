"""EtherIP header: round trips, garbage, and scapy as the independent oracle."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.contrib.etherip import EtherIP
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from softudc.wire import WireError
from softudc.wire.etherip import MAX_VNET_ID, EtherIPHeader, build_etherip, parse_etherip


@given(st.integers(0, MAX_VNET_ID))
def test_round_trip(vnet: int) -> None:
    assert parse_etherip(build_etherip(EtherIPHeader(vnet))) == EtherIPHeader(vnet)


@given(st.binary(max_size=8))
def test_garbage_raises_only_wire_error(buf: bytes) -> None:
    try:
        header = parse_etherip(buf)
    except WireError:
        return
    assert header.version == 3 and 0 <= header.vnet <= MAX_VNET_ID


def test_plain_rfc3378_header_is_0x3000() -> None:
    assert build_etherip(EtherIPHeader(0)) == b"\x30\x00"


@pytest.mark.parametrize("vnet", [-1, MAX_VNET_ID + 1, 0xFFF])
def test_out_of_range_vnet_is_refused(vnet: int) -> None:
    with pytest.raises(WireError, match="vnet id"):
        build_etherip(EtherIPHeader(vnet))


def test_reversed_openbsd_form_is_refused() -> None:
    with pytest.raises(WireError, match="version 0"):
        parse_etherip(b"\x03\x00")


def test_scapy_reads_what_we_build() -> None:
    inner = Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02") / IP() / ICMP(id=77)
    outer = IP(dst="10.0.0.2", proto=97) / Raw(build_etherip(EtherIPHeader(0)) + bytes(inner))
    pkt = IP(bytes(outer))
    assert pkt.haslayer(EtherIP)
    assert pkt[EtherIP].version == 3 and pkt[EtherIP].reserved == 0
    assert pkt[ICMP].id == 77


def test_we_read_what_scapy_builds() -> None:
    pkt = IP(dst="10.0.0.2") / EtherIP(reserved=42) / Ether() / IP() / ICMP()
    raw = bytes(pkt)
    header = parse_etherip(raw, 20)
    assert header == EtherIPHeader(42)
    assert Ether(raw[22:]).haslayer(ICMP)
