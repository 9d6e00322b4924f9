"""Hypothesis over the send side: whatever a guest makes its TAP hand over (virtio header and
frame, audit R4), `Forwarder._emit` (plain, GSO segmentation, checksum completion, ESP sealing)
raises nothing and either sends or counts a drop. A real forwarder on loopback sends to a sink."""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.vnet.forwarder import Forwarder
from gatekeeper.vnet.offload import GSO_ECN, GSO_TCPV4
from gatekeeper.vnet.port import VnetPort
from softudc.security.keys import VnetKeys
from softudc.wire.udpframe import FRAME_PREFIX_LEN
from tests.unit.gatekeeper.vnet.dataplane_fakes import FakeControl, tcp_frame

KEYS = VnetKeys("conf", {1: bytes(range(32))}, 1)


@pytest.fixture(scope="module")
def fwd() -> Iterator[tuple[Forwarder, dict[str, VnetPort]]]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    f = Forwarder(local_addr="127.0.0.1", group="224.10.0.1", flood="unicast", fdb={}, stale=set(), seen={},
                  local_macs=set(), control=FakeControl(), port=0, esp_port=0)
    f._ensure_raw()
    f._ensure_esp()
    f.port = f.esp_port = sink.getsockname()[1]  # everything goes to the sink (raw: to 127.0.0.1 itself)
    f.sas.set_keys(8, KEYS)
    ports = {"udp": VnetPort(5, -1, "udp", 1450, (), True), "raw": VnetPort(7, -1, "raw", 1450, (), True),
             "esp": VnetPort(8, -1, "udp", 1400, (), True, "conf"), "plain": VnetPort(6, -1, "udp", 1450)}
    yield f, ports
    f.stop()
    sink.close()


@st.composite
def tap_reads(draw: st.DrawFn) -> bytes:
    """A virtio header the guest's kernel could write (or not), then a frame near a TCP segment."""
    gso = draw(st.sampled_from([0, 0, GSO_TCPV4, GSO_TCPV4, GSO_TCPV4 | GSO_ECN, 3, 4, 0xFF]))
    flags = draw(st.sampled_from([0, 1, 1, 2, 0xFF]))
    frame = tcp_frame(draw(st.integers(0, 2**32 - 1)), data_offset=draw(st.sampled_from([5, 5, 8, 0, 2, 3, 4, 15])),
                      flags=draw(st.sampled_from([0x10, 0x18, 0x19, 0x02, 0xFF])),
                      payload=draw(st.sampled_from([0, 1, 100, 1400, 4000, 20000])))
    if draw(st.booleans()):
        edited = bytearray(frame)
        edited[14] = 0x40 | draw(st.integers(0, 15))  # any IHL
        edited[23] = draw(st.sampled_from([6, 6, 17, 1]))
        frame = bytes(edited)
    if draw(st.booleans()):
        frame = frame[:draw(st.integers(0, len(frame)))]
    hdr = struct.pack("<BBHHHH", flags, gso, draw(st.integers(0, 0xFFFF)),
                      draw(st.sampled_from([0, 1, 536, 1400, 1448, 0xFFFF])),
                      draw(st.sampled_from([34, 34, 0, 14, 60, 0xFFFF])), draw(st.sampled_from([16, 6, 0, 0xFFFF])))
    return hdr + frame


@pytest.mark.adversarial
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["udp", "raw", "esp", "plain"]), tap_reads())
def test_r4_whatever_the_tap_hands_over_is_sent_or_counted(fwd: tuple[Forwarder, dict[str, VnetPort]],
                                                            kind: str, read: bytes) -> None:
    forwarder, ports = fwd
    port = ports[kind]
    if not port.offload:
        read = read[10:]  # a TAP without IFF_VNET_HDR gives the frame alone
    buf = bytearray(FRAME_PREFIX_LEN) + read
    drops: Counter[str] = Counter()
    sent_before = port.stats[5]
    forwarder._emit(port, memoryview(buf), len(buf), ("127.0.0.1",), drops)
    assert port.stats[5] > sent_before or sum(drops.values()) > 0, (kind, read[:80].hex())
