"""The receive path and an eBPF host's frames (gatekeeper/vnet/unflagged.py): unflagged partial
checksums and whole TCP super-frames reach the TAP finished (offload TAP: NEEDS_CSUM, one GSO
write; plain TAP: completed, segmented in software), counted in `rx_fixed`; anything else is as
before. The real UDP loop of `Receiver` over a stub socket (dataplane_fakes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from gatekeeper.vnet.offload import F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR_LEN, complete_csum, parse_vnet_hdr
from gatekeeper.vnet.unflagged import l4_checksum
from softudc.wire.udpframe import FLAG_CSUM_PARTIAL
from tests.unit.gatekeeper.vnet.dataplane_fakes import MAC_A, MAC_B, PEER, FakeReceiver, udp_datagram

MTU = 1450


@pytest.fixture
def rx() -> Iterator[FakeReceiver]:
    r = FakeReceiver()
    r.add_port(5, offload=True, mtu=MTU)
    r.add_port(6, offload=False, mtu=MTU)
    yield r
    r.close()


def frame(payload: int, proto: str = "tcp", partial: bool = True, seq: int = 1000) -> bytes:
    """A TCP (ACK) or UDP frame from MAC_A to MAC_B; `partial`: the field holds the pseudo-header sum,
    as an eBPF host's encapsulation leaves it over a veth."""
    l4 = TCP(sport=40000, dport=5201, seq=seq, ack=1, flags="A") if proto == "tcp" else UDP(sport=1, dport=2)
    good = bytearray(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="192.168.1.1", dst="192.168.1.2", flags="DF")
                           / l4 / Raw(bytes(range(256)) * (payload // 256) + bytes(payload % 256))))
    if partial:
        loc = l4_checksum(good)
        assert loc is not None
        good[loc[0] + loc[1]:loc[0] + loc[1] + 2] = loc[3].to_bytes(2, "big")
    return bytes(good)


def completed(written: bytes) -> bytes:
    """The frame of a TAP write as the guest's stack sees it (NEEDS_CSUM completed as the kernel does)."""
    vh = parse_vnet_hdr(written)
    out = bytearray(written[VNET_HDR_LEN:])
    if vh.flags & F_NEEDS_CSUM:
        complete_csum(out, vh.csum_start, vh.csum_offset, len(out))
    return bytes(out)


def checks(data: bytes) -> bool:
    pkt = Ether(data)
    layer = pkt[TCP] if TCP in pkt else pkt[UDP]
    got = layer.chksum
    del layer.chksum
    again = Ether(bytes(pkt))
    return bool((again[TCP] if TCP in again else again[UDP]).chksum == got)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_an_unflagged_partial_checksum_goes_to_an_offload_tap_with_needs_csum(rx: FakeReceiver, proto: str) -> None:
    f = frame(200, proto)
    rx.run_udp([(udp_datagram(5, f), PEER)])
    [w] = rx.tap_frames(5)
    vh = parse_vnet_hdr(w)
    assert (vh.flags, vh.gso_type, vh.csum_start, vh.csum_offset) == (F_NEEDS_CSUM, GSO_NONE, 34,
                                                                      16 if proto == "tcp" else 6)
    assert w[VNET_HDR_LEN:] == f and checks(completed(w))
    assert rx.rx_fixed == {"partial_csum": 1}


def test_a_complete_frame_is_written_as_before(rx: FakeReceiver) -> None:
    f = frame(200, partial=False)
    rx.run_udp([(udp_datagram(5, f), PEER)])
    assert rx.tap_frames(5) == [bytes(VNET_HDR_LEN) + f]
    assert not getattr(rx, "rx_fixed", None)


def test_a_flagged_partial_frame_is_seeded_as_before(rx: FakeReceiver) -> None:
    f = frame(200)
    rx.run_udp([(udp_datagram(5, f, FLAG_CSUM_PARTIAL), PEER)])
    [w] = rx.tap_frames(5)
    assert parse_vnet_hdr(w).flags == F_NEEDS_CSUM and checks(completed(w))
    assert not getattr(rx, "rx_fixed", None)  # the sender said so: nothing found


def test_a_whole_super_frame_is_one_gso_write(rx: FakeReceiver) -> None:
    f = frame(30000)
    rx.run_udp([(udp_datagram(5, f), PEER)])
    [w] = rx.tap_frames(5)
    vh = parse_vnet_hdr(w)
    assert (vh.flags, vh.gso_type, vh.hdr_len, vh.gso_size) == (F_NEEDS_CSUM, GSO_TCPV4, 54, MTU - 40)
    assert w[VNET_HDR_LEN:] == f
    assert rx.rx_fixed == {"superframe": 1}
    stats = rx.vnets[5].stats
    assert (stats[2], stats[6], stats[8]) == (-(-30000 // (MTU - 40)), 1, 1)  # frames, datagrams, super-frames


def test_whole_super_frames_of_equal_size_in_one_batch_are_not_merged_further(rx: FakeReceiver) -> None:
    """Two equal-sized super-frames queued back to back form a drained batch; coalescing them would
    build a GSO frame with a gso_size of a whole super-frame. Each goes alone."""
    a, b = frame(20000, seq=1000), frame(20000, seq=21000)
    rx.run_udp([(udp_datagram(5, a), PEER), (udp_datagram(5, b), PEER)])
    writes = rx.tap_frames(5)
    assert [w[VNET_HDR_LEN:] for w in writes] == [a, b]
    assert all(parse_vnet_hdr(w).gso_size == MTU - 40 for w in writes)


def test_on_a_plain_tap_partial_checksums_are_completed_and_super_frames_cut(rx: FakeReceiver) -> None:
    small, big = frame(200), frame(5000)
    rx.run_udp([(udp_datagram(6, small), PEER), (udp_datagram(6, frame(100), FLAG_CSUM_PARTIAL), PEER),
                (udp_datagram(6, big), PEER)])
    writes = rx.tap_frames(6)
    assert all(checks(w) for w in writes)
    assert len(writes) == 2 + 4 and all(len(w) <= MTU + 14 for w in writes)
    assert b"".join(bytes(Ether(w)[TCP].payload) for w in writes[2:]) == bytes(Ether(big)[TCP].payload)
    assert rx.rx_fixed == {"partial_csum_software": 2, "superframe_segmented": 1}
    assert rx.drop_total() == 0


@pytest.mark.parametrize("what", ["zeros", "udp", "trailing"])
def test_other_oversize_frames_are_still_dropped(rx: FakeReceiver, what: str) -> None:
    f = {"zeros": bytes(9000), "udp": frame(5000, "udp"), "trailing": frame(5000) + bytes(4)}[what]
    rx.run_udp([(udp_datagram(5, f), PEER)])
    assert rx.tap_frames(5) == []
    assert rx.drops["udp"] == {"oversize": 1}


def test_a_secured_vnet_takes_no_plaintext_super_frame(rx: FakeReceiver) -> None:
    rx.add_port(8, security="conf", mtu=MTU)
    rx.run_udp([(udp_datagram(8, frame(5000)), PEER)])
    assert rx.tap_frames(8) == [] and rx.drops["udp"] == {"plaintext_on_secure_vnet": 1}


@st.composite
def sent(draw: st.DrawFn) -> tuple[bytes, str]:
    """(frame, state): an eBPF host's frame with its checksum partial, complete or bad, sometimes
    a whole super-frame."""
    state = draw(st.sampled_from(["partial", "complete", "bad"]))
    proto = draw(st.sampled_from(["tcp", "udp"]))
    size = draw(st.one_of(st.integers(0, MTU - 28), st.integers(MTU, 20000))) if proto == "tcp" else draw(
        st.integers(0, MTU - 28))
    f = bytearray(frame(size, proto, partial=state == "partial", seq=draw(st.integers(0, 2**32 - 1))))
    if state == "bad":
        loc = l4_checksum(f)
        assert loc is not None
        at = loc[0] + loc[1]
        good = int.from_bytes(f[at:at + 2], "big")
        value = draw(st.integers(1, 0xFFFE).filter(lambda v: v not in (good, loc[3])))
        f[at:at + 2] = value.to_bytes(2, "big")
    return bytes(f), state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sent(), min_size=1, max_size=6), st.sampled_from([5, 6]))
def test_whatever_arrives_the_guest_gets_a_good_frame_exactly_when_the_sender_sent_one(
        items: list[tuple[bytes, str]], vnet: int) -> None:
    """Offload (5) or plain (6) TAP, datagrams alone or drained in a batch: partial and complete
    checksums arrive good, bad ones arrive bad (never "fixed"), each payload once, nothing raises;
    super-frames only with their checksum partial."""
    rx = FakeReceiver()
    try:
        rx.add_port(5, offload=True, mtu=MTU)
        rx.add_port(6, offload=False, mtu=MTU)
        rx.run_udp([(udp_datagram(vnet, f), PEER) for f, _ in items])
        # a super-frame whose checksum is not partial is no GSO frame: refused (it would be "fixed")
        taken = [(f, state) for f, state in items if len(f) <= MTU + 14 or state == "partial"]
        assert rx.drops["udp"] == ({"oversize": len(items) - len(taken)} if len(taken) < len(items) else {})
        writes = rx.tap_frames(vnet)
        got = [completed(w) if vnet == 5 else w for w in writes]
        if vnet == 5:  # one write per datagram (GSO for super-frames)
            assert len(got) == len(taken)
            for (f, state), g in zip(taken, got, strict=True):
                assert checks(g) == (state != "bad") and g[:34] == f[:34]
        else:  # super-frames cut into segments, each checking
            assert sum(not checks(g) for g in got) == sum(state == "bad" for _, state in taken)
            payload = b"".join(bytes((Ether(g)[TCP] if TCP in Ether(g) else Ether(g)[UDP]).payload) for g in got)
            want = b"".join(bytes((Ether(f)[TCP] if TCP in Ether(f) else Ether(f)[UDP]).payload) for f, _ in taken)
            assert payload == want
    finally:
        rx.close()
