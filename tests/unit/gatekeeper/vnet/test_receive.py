"""The receive path (UDP/1798, raw protocol 97, ESP on UDP/4500) against hostile input: the real
loops of `Receiver` over stub sockets (audit R2, R3)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gatekeeper.vnet import offload
from gatekeeper.vnet.esp_sa import SecurityAssociations
from gatekeeper.vnet.offload import GSO_TCPV4, OffloadError, VnetHdr
from softudc.security.keys import VnetKeys
from tests.unit.gatekeeper.vnet.dataplane_fakes import (
    LOCAL,
    MAC_A,
    PEER,
    FakeReceiver,
    eth,
    ipv4,
    r2_pair,
    raw_packet,
    tcp,
    tcp_frame,
    udp_datagram,
)

KEYS = VnetKeys("conf", {1: bytes(range(32))}, 1)


@pytest.fixture
def rx() -> Iterator[FakeReceiver]:
    r = FakeReceiver()
    yield r
    r.close()


def errors(rx: FakeReceiver) -> dict[str, int]:
    return {f"{path}/{reason}": n for path, c in rx.drops.items() for reason, n in c.items()
            if reason.startswith("error_")}


# --- R2: TCP data offset below 5 -------------------------------------------------------------

@pytest.mark.adversarial
def test_r2_audit_datagram_pair_is_handled_and_the_udp_loop_carries_on(rx: FakeReceiver) -> None:
    """The audit's two datagrams (TCP data offset 0, ACK, equal size, VNET 5 with offload) went
    through coalesce into IndexError and ended fwd-udp. Now they are plain frames, nothing
    raises, and a good frame after them still arrives."""
    rx.add_port(5, offload=True)
    good = udp_datagram(5, tcp_frame(5000, payload=100))
    rx.run_udp([(d, PEER) for d in r2_pair(5)] + [None, (good, PEER)])
    assert errors(rx) == {}
    frames = rx.tap_frames(5)
    assert len(frames) == 3  # both hostile frames delivered as they are (the guest's TCP drops them), then the good one
    assert frames[-1][offload.VNET_HDR_LEN:] == tcp_frame(5000, payload=100)
    assert rx.vnets[5].stats[6] == 3


@pytest.mark.parametrize("data_offset", [0, 1, 2, 3, 4])
def test_r2_tcp_info_refuses_a_tcp_header_shorter_than_20_bytes(data_offset: int) -> None:
    frame = memoryview(tcp_frame(1000, data_offset=data_offset))
    assert offload._tcp_info(frame) is None
    assert offload._tcp_info(memoryview(tcp_frame(1000, data_offset=5))) is not None


@pytest.mark.adversarial
def test_r2_coalesce_of_a_short_tcp_header_batch_yields_singles() -> None:
    batch = b"".join(r2_pair(5)) * 4  # 8 equal datagrams: both the scalar and the numpy path
    stride = len(r2_pair(5)[0])
    for count in (2, 8):
        runs = list(offload.coalesce(memoryview(batch[:count * stride]), stride, count, 6))
        assert runs == [(i, 1, 0) for i in range(count)]


@pytest.mark.adversarial
def test_r2_raw_batch_with_a_short_tcp_header_is_handled(rx: FakeReceiver) -> None:
    """The raw protocol-97 batch path failed the same way as UDP."""
    rx.add_port(5, offload=True, transport="raw")
    pkts = [raw_packet(5, tcp_frame(seq, data_offset=0), ident=i) for i, seq in enumerate((1000, 1600))]
    rx.run_raw([(p, PEER) for p in pkts])
    assert errors(rx) == {}
    assert len(rx.tap_frames(5)) == 2


# --- R4: segment() ---------------------------------------------------------------------------

@pytest.mark.parametrize("data_offset", [0, 2, 3, 4])
def test_r4_segment_refuses_a_tcp_header_shorter_than_20_bytes(data_offset: int) -> None:
    frame = memoryview(tcp_frame(1000, data_offset=data_offset, payload=4000))
    with pytest.raises(OffloadError, match="TCP header"):
        offload.segment(frame, VnetHdr(1, GSO_TCPV4, 54, 1400, 34, 16), b"\0" * 6)


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_r4_segment_refuses_an_ipv4_header_shorter_than_20_bytes(ihl: int) -> None:
    frame = bytearray(tcp_frame(1000, payload=4000))
    frame[14] = 0x40 | ihl
    with pytest.raises(OffloadError):
        offload.segment(memoryview(frame), VnetHdr(1, GSO_TCPV4, 54, 1400, 34, 16), b"\0" * 6)


# --- R3: short ESP payloads ------------------------------------------------------------------

@pytest.mark.adversarial
@pytest.mark.parametrize("payload", [b"", b"\x30", b"\x30\x05", b"\x30\x05" + MAC_A, b"\x30\x05" + bytes(13)])
def test_r3_short_authentic_esp_payload_is_counted_not_fatal(rx: FakeReceiver, payload: bytes) -> None:
    """A key holder sealed payloads too short for an EtherIP header plus an Ethernet header: they
    raised IndexError in `_deliver_one_plain` or `_learn` and ended fwd-esp."""
    rx.add_port(5, security="conf")
    rx.sas.set_keys(5, KEYS)
    tx = SecurityAssociations(PEER)
    tx.set_keys(5, KEYS)
    good = b"\x30\x05" + tcp_frame(7, payload=50)
    rx.run_esp([(tx.seal(5, payload), PEER), None, (tx.seal(5, good), PEER)])
    assert errors(rx) == {}
    assert rx.drops["esp"]["esp_runt"] == 1
    assert [f[offload.VNET_HDR_LEN:] for f in rx.tap_frames(5)] == [good[2:]]


def test_r3_learn_ignores_a_frame_too_short_for_a_source_mac(rx: FakeReceiver) -> None:
    rx._learn(5, memoryview(b"\x02\x00\x00"), PEER)
    assert rx.control.learned == []


# --- the loop guard --------------------------------------------------------------------------

@pytest.mark.adversarial
def test_r2_any_exception_from_one_datagram_is_counted_by_class_and_logged_once(
        rx: FakeReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever a datagram makes the receive code raise costs that datagram only: counted under
    error_<class>, logged at most once per reason per interval, and the loop goes on."""
    rx.add_port(5, offload=False)
    real = rx._rx_datagram
    bad = udp_datagram(5, tcp_frame(1, payload=10) + b"BOOM")

    def flaky(mv: memoryview, off: int, end: int, src: str, drops: object) -> None:
        if bytes(mv[end - 4:end]) == b"BOOM":
            raise KeyError("a bug somewhere")
        real(mv, off, end, src, drops)  # type: ignore[arg-type]

    monkeypatch.setattr(rx, "_rx_datagram", flaky)
    good = udp_datagram(5, tcp_frame(2, payload=10))
    with caplog.at_level(logging.WARNING, logger="test.dataplane"):
        rx.run_udp([(bad, PEER), None] * 5 + [(good, PEER)])
    assert rx.drops["udp"]["error_KeyError"] == 5
    assert len(rx.tap_frames(5)) == 1
    lines = [r for r in caplog.records if "KeyError" in r.getMessage()]
    assert len(lines) == 1 and "fwd-udp" in lines[0].getMessage()


def test_r2_rate_limited_log_reports_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    from gatekeeper.vnet.supervisor import RateLimitedLog

    now = [0.0]
    errlog = RateLimitedLog(logging.getLogger("test.ratelimit"), clock=lambda: now[0], interval=10.0)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        assert errlog("fwd-udp", "error_X", ValueError("1"))
        assert not errlog("fwd-udp", "error_X", ValueError("2"))
        assert errlog("fwd-udp", "error_Y", ValueError("3"))  # another reason has its own budget
        now[0] = 10.5
        assert errlog("fwd-udp", "error_X", ValueError("4"))
    assert len(caplog.records) == 3
    assert "1 more since the last report" in caplog.records[2].getMessage()


# --- R18 member hosts ------------------------------------------------------------------------

@pytest.mark.adversarial
def test_r18_frames_from_a_host_outside_the_member_list_are_dropped(rx: FakeReceiver) -> None:
    rx.add_port(5, offload=True, members=(PEER,))
    frame = tcp_frame(1, payload=700)
    rx.run_udp([(udp_datagram(5, frame), "198.51.100.7"), None, (udp_datagram(5, frame), PEER)])
    # and a batch that would merge, from the stranger
    batch = [(udp_datagram(5, tcp_frame(1000 + i * 700, payload=700)), "198.51.100.7") for i in range(3)]
    rx.run_udp(batch)
    assert rx.drops["udp"]["not_member_host"] == 4
    assert len(rx.tap_frames(5)) == 1
    assert [a for _, _, a in rx.control.learned] == [PEER]


def test_r18_no_member_list_means_no_filter(rx: FakeReceiver) -> None:
    rx.add_port(5, offload=False)
    rx.run_udp([(udp_datagram(5, tcp_frame(1, payload=10)), "198.51.100.7")])
    assert len(rx.tap_frames(5)) == 1


def test_runt_frame_after_the_header_checks_is_counted(rx: FakeReceiver) -> None:
    """Raw packets whose frame is shorter than an Ethernet header never reach the TAP."""
    rx.add_port(5, offload=False, transport="raw")
    short = ipv4(97, 2 + 6, PEER, LOCAL) + b"\x30\x05" + eth()[:6]
    rx.run_raw([(short, PEER)])
    assert rx.drops["raw"]["bad_frame"] == 1
    assert rx.tap_frames(5) == []


def test_tcp_helper_builds_twenty_bytes() -> None:
    assert len(tcp(1, data_offset=0)) == 20


@pytest.mark.parametrize("mss", [1, 87, 65535 - 40 + 1, 0xFFFF])
def test_r4_segment_refuses_a_gso_size_outside_what_tcp_and_ipv4_allow(mss: int) -> None:
    """Found by the send-side fuzz: a guest's gso_size of 0xFFFF made an IPv4 length that does
    not fit 16 bits (OverflowError); a gso_size of 1 would cut 64 KiB into 64 Ki datagrams."""
    frame = memoryview(tcp_frame(1000, payload=4000))
    with pytest.raises(OffloadError, match="mss"):
        offload.segment(frame, VnetHdr(1, GSO_TCPV4, 54, mss, 34, 16), b"\0" * 6)
    offload.segment(frame, VnetHdr(1, GSO_TCPV4, 54, 88, 34, 16), b"\0" * 6)  # the smallest allowed


@pytest.mark.adversarial
def test_r18_esp_from_a_host_outside_the_member_list_is_dropped_before_any_crypto(
        rx: FakeReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    rx.add_port(5, security="conf", members=(PEER,))
    rx.sas.set_keys(5, KEYS)
    opened: list[str] = []
    real_open = rx.sas.open

    def counting_open(buf: memoryview, src: str) -> tuple[int, bytes]:
        opened.append(src)
        return real_open(buf, src)

    monkeypatch.setattr(rx.sas, "open", counting_open)
    stranger = SecurityAssociations("198.51.100.7")
    stranger.set_keys(5, KEYS)  # even with the key
    good = b"\x30\x05" + tcp_frame(7, payload=50)
    rx.run_esp([(stranger.seal(5, good), "198.51.100.7"), None, (b"\x10\x05\x00\x01" + bytes(40), "198.51.100.7")])
    assert rx.drops["esp"]["not_member_host"] == 2 and opened == []
    tx = SecurityAssociations(PEER)
    tx.set_keys(5, KEYS)
    rx.run_esp([(tx.seal(5, good), PEER)])
    assert opened == [PEER] and len(rx.tap_frames(5)) == 1


# --- ESP batches (issue 16 item 6: opened into one buffer, merged) ---------------------------------

def esp_burst(tx: SecurityAssociations, vnet: int, payload: int = 6000, mss: int = 1000) -> list[bytes]:
    """The ESP packets a sender's TAP thread makes of one TCP super-frame."""
    from gatekeeper.vnet import esp_batch

    frame = tcp_frame(1000, payload=payload, flags=0x18)
    seg = offload.segment_rows(memoryview(frame), VnetHdr(1, GSO_TCPV4, 54, mss, 34, 16), bytes([0x30, vnet]),
                               full_csum=True, room=esp_batch.TRAILER_ROOM)
    out, size, used = tx.seal_segments(vnet, seg)
    data = out.reshape(-1).tobytes()[:used]
    return [data[k:k + size] for k in range(0, used, size)]


def test_an_esp_burst_reaches_the_tap_as_one_super_frame(rx: FakeReceiver) -> None:
    rx.add_port(5, security="conf")
    rx.sas.set_keys(5, KEYS)
    tx = SecurityAssociations(PEER)
    tx.set_keys(5, KEYS)
    first = esp_burst(tx, 5)  # a new SA: opened one by one, kept with its first packet
    second = esp_burst(tx, 5)  # an SA in the table: one `open_run`
    rx.run_esp([(p, PEER) for p in first] + [None] + [(p, PEER) for p in second] + [None])
    assert errors(rx) == {}
    frames = rx.tap_frames(5)
    assert len(frames) == 2
    for out in frames:
        hdr = offload.parse_vnet_hdr(out)
        assert hdr.gso_type == GSO_TCPV4 and hdr.gso_size == 1000
        assert out[offload.VNET_HDR_LEN:][54:] == bytes(6000)  # the payload, in order
    assert rx.vnets[5].stats[6] == 12 and rx.vnets[5].stats[8] == 2


@pytest.mark.adversarial
def test_a_tampered_or_replayed_packet_in_an_esp_burst_costs_that_packet_only(rx: FakeReceiver) -> None:
    rx.add_port(5, security="conf")
    rx.sas.set_keys(5, KEYS)
    tx = SecurityAssociations(PEER)
    tx.set_keys(5, KEYS)
    rx.run_esp([(tx.seal(5, b"\x30\x05" + tcp_frame(7, payload=50)), PEER)])
    burst = esp_burst(tx, 5)
    bad = bytearray(burst[3])
    bad[-1] ^= 1
    rx.run_esp([(p if k != 3 else bytes(bad), PEER) for k, p in enumerate(burst)] + [None])
    assert rx.drops["esp"]["esp_auth_failed"] == 1
    rx.run_esp([(p, PEER) for p in burst[:2]] + [None])  # replayed
    assert rx.drops["esp"]["esp_replay"] == 2
    assert errors(rx) == {} and sum(rx.drops["esp"].values()) == 3
    frames = rx.tap_frames(5)
    delivered = sum(len(f) - offload.VNET_HDR_LEN - 54 for f in frames[1:])
    assert delivered == 5000  # every segment but the tampered one
