"""The migration bench's timeline: pcap reading, classifying segment frames, placing events on the gap."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.bench import migration_trace as trace
from softudc.bench.migration import longest_gap, resume_logged, summarize
from softudc.wire.header import MessageHeader, MsgId, build_header
from softudc.wire.varp import VarpMessage, VarpOp, build_varp

VM_MAC = bytes.fromhex("525400aa0001")
PINGER_MAC = bytes.fromhex("525400000003")
VM_IP, PINGER_IP = "10.0.0.11", "10.0.0.3"
H1, H2, H3 = "10.100.0.11", "10.100.0.12", "10.100.0.13"
BCAST = b"\xff" * 6


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + payload


def icmp(kind: int) -> bytes:
    return bytes([kind, 0, 0, 0, 0, 1, 0, 1]) + bytes(16)


def rarp(mac: bytes) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + mac + bytes(4) + mac + bytes(4)
    return eth(BCAST, mac, trace.ETH_P_RARP, body)


def echo(request: bool) -> bytes:
    if request:
        return eth(VM_MAC, PINGER_MAC, 0x0800, ipv4(PINGER_IP, VM_IP, 1, icmp(8)))
    return eth(PINGER_MAC, VM_MAC, 0x0800, ipv4(VM_IP, PINGER_IP, 1, icmp(0)))


def udp_1798(src: str, dst: str, msg: bytes) -> bytes:
    udp = struct.pack("!HHHH", 1798, 1798, 8 + len(msg), 0) + msg
    return eth(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(src, dst, 17, udp))


def in_vnet(src: str, dst: str, inner: bytes, vnet: int = 10) -> bytes:
    return udp_1798(src, dst, build_header(MessageHeader(MsgId.FRAME, 0)) + (0x3000 | vnet).to_bytes(2, "big") + inner)


def announce(src: str, dst: str, mac: bytes = VM_MAC) -> bytes:
    msg = VarpMessage(VarpOp.ANNOUNCE, 10, mac, ipaddress.IPv4Address(src))
    return udp_1798(src, dst, build_varp(msg))


def pcap(records: list[tuple[float, bytes]], nanos: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    for t, frame in records:
        sec = int(t)
        frac = round((t - sec) * (1e9 if nanos else 1e6))
        out += struct.pack("<IIII", sec, frac, len(frame), len(frame)) + frame
    return out


def test_read_pcap_micro_and_nano_stamps() -> None:
    frames = [(1000.25, b"a" * 20), (1000.5, b"b" * 30)]
    for nanos in (False, True):
        got = list(trace.read_pcap(pcap(frames, nanos)))
        assert [f for _, f in got] == [b"a" * 20, b"b" * 30]
        assert got[0][0] == pytest.approx(1000.25) and got[1][0] == pytest.approx(1000.5)


def test_read_pcap_stops_at_a_cut_record_and_refuses_other_files() -> None:
    data = pcap([(1.0, b"x" * 40), (2.0, b"y" * 40)])
    assert [f for _, f in trace.read_pcap(data[:-10])] == [b"x" * 40]
    with pytest.raises(trace.TraceError, match="not a pcap"):
        list(trace.read_pcap(b"\x0a\x0d\x0d\x0a" + bytes(40)))  # pcapng
    linux_sll = bytearray(pcap([]))
    linux_sll[20:24] = (113).to_bytes(4, "little")
    with pytest.raises(trace.TraceError, match="link type 113"):
        list(trace.read_pcap(bytes(linux_sll)))


def test_classify_vnet_frames_and_varp() -> None:
    c = trace.classify
    assert c(1.0, in_vnet(H2, H3, rarp(VM_MAC)), VM_MAC, VM_IP) == trace.Event(1.0, "self_announce", H2, H3)
    assert c(1.0, in_vnet(H3, H2, echo(True)), VM_MAC, VM_IP) == trace.Event(1.0, "echo_request", H3, H2)
    assert c(1.0, in_vnet(H2, H3, echo(False)), VM_MAC, VM_IP) == trace.Event(1.0, "echo_reply", H2, H3)
    assert c(1.0, announce(H2, H3), VM_MAC, VM_IP) == trace.Event(1.0, "varp_announce", H2, H3)
    assert c(1.0, announce(H2, H3, PINGER_MAC), VM_MAC, VM_IP) is None  # another MAC
    assert c(1.0, in_vnet(H2, H3, rarp(PINGER_MAC)), VM_MAC, VM_IP) is None


def test_classify_plain_l2() -> None:
    assert trace.classify(2.0, rarp(VM_MAC), VM_MAC, VM_IP) == trace.Event(2.0, "self_announce")
    assert trace.classify(2.0, echo(True), VM_MAC, VM_IP) == trace.Event(2.0, "echo_request")
    assert trace.classify(2.0, echo(False), VM_MAC, VM_IP) == trace.Event(2.0, "echo_reply")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 100))
def test_classify_never_raises_on_any_bytes(junk: bytes, cut: int) -> None:
    trace.classify(0.0, junk, VM_MAC, VM_IP)
    trace.classify(0.0, in_vnet(H2, H3, rarp(VM_MAC))[:cut] + junk, VM_MAC, VM_IP)
    trace.classify(0.0, announce(H2, H3)[:cut] + junk, VM_MAC, VM_IP)


def test_timeline_places_the_vnet_events_after_the_gaps_start(tmp_path: Path) -> None:
    t0 = 5000.0
    records = [
        (t0 - 0.010, in_vnet(H3, H1, echo(True))), (t0, in_vnet(H1, H3, echo(False))),  # last reply from h1
        (t0 + 0.010, in_vnet(H3, H1, echo(True))),  # lost: the VM is stopped on h1
        (t0 + 0.040, in_vnet(H2, H3, rarp(VM_MAC))), (t0 + 0.040, in_vnet(H2, H1, rarp(VM_MAC))),
        (t0 + 0.070, announce(H2, H3)),
        (t0 + 0.080, in_vnet(H3, H2, echo(True))), (t0 + 0.081, in_vnet(H2, H3, echo(False))),
    ]
    path = tmp_path / "seg.pcap"
    path.write_bytes(pcap(records, nanos=True))
    evs = trace.events(path, "52:54:00:aa:00:01", VM_IP)
    got = trace.timeline(evs, t0, t0 + 0.0815, H2)
    assert got == {"gap_ms": 81.5, "gap_at_switchover": True, "announced_by_guest_ms": 40.0, "varp_announce_ms": 70.0,
                   "redirected_ms": 80.0, "first_reply_ms": 81.0, "reply_after_guest_announce_ms": 41.0,
                   "requests_to_old_host_after_guest_announce": 0}
    late = [*records, (t0 + 0.050, in_vnet(H3, H1, echo(True)))]  # one request after the RARP still to h1
    path.write_bytes(pcap(sorted(late, key=lambda r: r[0]), nanos=True))
    evs_late = trace.events(path, "52:54:00:aa:00:01", VM_IP)
    assert trace.timeline(evs_late, t0, t0 + 0.0815, H2)["requests_to_old_host_after_guest_announce"] == 1
    stall = trace.timeline(evs, t0 - 1.0, t0 - 0.9, H2)  # a gap a second earlier: not the switchover's
    assert stall == {"gap_ms": 100.0, "gap_at_switchover": False}
    plain = trace.timeline(evs, t0, t0 + 0.0815, None)
    assert plain["varp_announce_ms"] is None and plain["redirected_ms"] is None


def test_longest_gap_and_resume_log(tmp_path: Path) -> None:
    assert longest_gap([1.0, 1.01, 1.02, 1.11, 1.12]) == (1.02, 1.11)
    assert longest_gap([1.0]) == (0.0, 0.0)
    log = tmp_path / "gatekeeper.log"
    log.write_text("2026-11-27 10:00:00,250 gatekeeper.hypervisor INFO migvnet migrated here with 1 VNET NIC(s)\n"
                   "2026-11-27 10:00:01,000 gatekeeper.hypervisor INFO migvnet2 migrated here with 1 VNET NIC(s)\n"
                   "2026-11-27 10:00:02,500 gatekeeper.hypervisor INFO migvnet started here with 1 VNET NIC(s)\n")
    stamps = resume_logged(str(log), "migvnet")
    assert len(stamps) == 1
    assert stamps[0] % 1 == pytest.approx(0.25)


def test_summarize_compares_gaps_and_gaps_beyond_downtime() -> None:
    def run(gap: float, downtime: float) -> dict[str, float | None]:
        return {"longest_gap_ms": gap, "downtime_ms": downtime, "beyond_downtime_ms": gap - downtime,
                "gap_start": 1.0, "gap_end": 2.0, "varp_announce_ms": None}
    per = {"vnet": [run(100, 60), run(80, 50), run(120, 100)], "plain_l2": [run(90, 70), run(70, 40), run(60, 30)]}
    out = summarize(per, 3, "qemu")
    assert out["vnet"]["longest_gap_ms"] == 100 and out["plain_l2"]["longest_gap_ms"] == 70
    assert out["ratios"]["gap_vnet_minus_plain_ms"] == 30
    assert out["ratios"]["beyond_downtime_vnet_minus_plain_ms"] == 30 - 30  # 30 (of 40, 30, 20) vs 30
    assert out["vnet"]["varp_announce_ms"] is None and "gap_start" not in out["vnet"]
    per["vnet"][0]["gap_at_switchover"] = True
    assert summarize(per, 3, "qemu")["vnet"]["gaps_at_switchover"] == 1
