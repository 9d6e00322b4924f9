"""ESP packets of single TAP frames (the ACK direction) leave a drain together (`esp_sendbatch`):
one UDP_SEGMENT send per run of same-sized packets to one address, in the TAP's order, each
packet still sealed on its own (own sequence number). A real forwarder on loopback drains a TAP
(one end of an AF_UNIX socketpair) into a sink with UDP_GRO, on both engines."""

from __future__ import annotations

import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.vnet.esp_sa import SecurityAssociations
from gatekeeper.vnet.esp_sendbatch import SendBatch
from gatekeeper.vnet.forwarder import Forwarder
from gatekeeper.vnet.offload import GSO_TCPV4
from gatekeeper.vnet.port import (
    BUF_SIZE,
    MAX_GSO_SEGMENTS,
    MAX_UDP_PAYLOAD,
    RX_BUF_SIZE,
    RX_OFF,
    SOL_UDP,
    UDP_GRO,
    VnetPort,
)
from gatekeeper.vnet.receive import ESP_PREFIX
from softudc.security.keys import VnetKeys
from softudc.wire.udpframe import FRAME_PREFIX_LEN
from tests.unit.gatekeeper.vnet.dataplane_fakes import (
    MAC_B,
    PEER,
    FakeControl,
    FakeReceiver,
    tcp_frame,
    use_esp_engine,
)

KEYS = VnetKeys("conf", {1: bytes(range(32))}, 1)
VNET = 8
LOCAL = "127.0.0.1"


# --- SendBatch alone ---------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2"]), st.sampled_from([60, 100, 104, 108, 1500]),
                          st.integers(0, 255)), max_size=150))
def test_batches_keep_order_and_are_valid_udp_segment_sends(packets: list[tuple[str, int, int]]) -> None:
    """Whatever comes (addresses, sizes), the sends carry every packet once, in order; each send
    is one address, equal sizes but a shorter last, at most 64 packets and 65,507 bytes."""
    sends: list[tuple[bytes, int, int, str]] = []

    def send(data: memoryview, size: int, count: int, addr: str, drops: Counter[str]) -> int:
        sends.append((bytes(data), size, count, addr))
        return count

    port = VnetPort(VNET, -1, "udp", 1400, (), True, "conf")
    batch, drops = SendBatch(send), Counter[str]()
    for addr, n, fill in packets:  # as Forwarder._esp_out does it
        if not batch.fits(port, addr, n):
            batch.flush(drops)
        batch.add(port, addr, bytes([fill]) * n)
    batch.flush(drops)
    got: list[tuple[str, int, int]] = []
    for data, size, count, addr in sends:
        assert count <= MAX_GSO_SEGMENTS and len(data) <= MAX_UDP_PAYLOAD
        chunks = [data[k:k + size] for k in range(0, len(data), size)]
        assert len(chunks) == count and all(len(c) == size for c in chunks[:-1]) and len(chunks[-1]) <= size
        got += [(addr, len(c), c[0]) for c in chunks]
    assert got == packets
    assert port.stats[0] == port.stats[5] == len(packets) and port.stats[1] == sum(n for _, n, _ in packets)
    assert batch.count == 0


# --- a real drain ------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["native", "python"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from use_esp_engine(request.param)


@pytest.fixture
def lab(engine: str) -> Iterator[tuple[Forwarder, VnetPort, socket.socket, socket.socket]]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((LOCAL, 0))
    sink.setsockopt(SOL_UDP, UDP_GRO, 1)
    sink.settimeout(2)
    f = Forwarder(local_addr=LOCAL, group="224.10.0.1", flood="unicast", fdb={}, stale=set(), seen={},
                  local_macs=set(), control=FakeControl(), port=0, esp_port=0)
    f._ensure_esp()
    f.esp_port = sink.getsockname()[1]
    f.sas.set_keys(VNET, KEYS)
    ours, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    port = VnetPort(VNET, ours.detach(), "udp", 1400, (LOCAL,), True, "conf")
    f.fdb[(VNET, MAC_B)] = LOCAL
    yield f, port, tap, sink
    f.stop()
    os.close(port.fd)
    tap.close()
    sink.close()


def ack(seq: int, options: int = 0) -> bytes:
    """A pure ACK as the TAP hands it over: virtio header (no offload) + frame."""
    return bytes(10) + tcp_frame(seq, payload=options)


def superframe(seq: int) -> bytes:
    frame = tcp_frame(seq, payload=3000)
    return struct.pack("<BBHHHH", 1, GSO_TCPV4, 54, 1000, 34, 16) + frame


def drain(f: Forwarder, port: VnetPort, tap: socket.socket, reads: list[bytes]) -> Counter[str]:
    for r in reads:
        tap.send(r)
    buf = bytearray(BUF_SIZE)
    mv = memoryview(buf)
    drops: Counter[str] = Counter()
    batch = SendBatch(f._esp_send)
    f._drain_tap(port, buf, mv, mv[FRAME_PREFIX_LEN:], drops, batch)
    batch.flush(drops)  # as the TAP loop does after every drain
    return drops


def receive(sink: socket.socket, packets: int) -> list[list[bytes]]:
    """What the sink's recvmsg calls returned, each cut into its packets (UDP_GRO)."""
    calls: list[list[bytes]] = []
    while sum(len(c) for c in calls) < packets:
        data, anc, _, _ = sink.recvmsg(65535, socket.CMSG_SPACE(4))
        size = len(data)
        for level, kind, cdata in anc:
            if level == SOL_UDP and kind == UDP_GRO:
                size = struct.unpack("=i", cdata[:4])[0] or size
        calls.append([data[k:k + size] for k in range(0, len(data), size)])
    return calls


def opened(packets: list[bytes]) -> list[tuple[int, bytes]]:
    """(sequence number, frame) of every packet, opened by the peer."""
    rx = SecurityAssociations("127.0.0.2")
    rx.set_keys(VNET, KEYS)
    out = []
    for p in packets:
        vnet, payload = rx.open(p, LOCAL)
        assert vnet == VNET and payload[:2] == b"\x30\x08"
        out.append((int.from_bytes(p[4:8], "big"), payload[2:]))
    return out


def test_acks_of_one_drain_leave_in_one_send_and_open_in_order(
        lab: tuple[Forwarder, VnetPort, socket.socket, socket.socket]) -> None:
    f, port, tap, sink = lab
    reads = [ack(1000 + k) for k in range(20)]
    drops = drain(f, port, tap, reads)
    assert drops == Counter()
    calls = receive(sink, 20)
    assert [len(c) for c in calls] == [20]  # one UDP_SEGMENT send, one GRO batch
    got = opened(calls[0])
    assert [frame for _, frame in got] == [r[10:] for r in reads]
    assert [seq for seq, _ in got] == list(range(got[0][0], got[0][0] + 20))
    assert port.stats[0] == port.stats[5] == 20


def test_other_sizes_floods_and_super_frames_keep_the_order(
        lab: tuple[Forwarder, VnetPort, socket.socket, socket.socket]) -> None:
    """A shorter packet ends a run, a longer one starts a new one; a flooded frame joins (one
    member); a super-frame flushes what waits and leaves on its own."""
    f, port, tap, sink = lab
    bcast = bytearray(ack(5))
    bcast[10:16] = b"\xff" * 6
    reads = [ack(1), ack(2), ack(3, 12), ack(4, 12), ack(5, 4), bytes(bcast), superframe(6), ack(7), ack(8)]
    drops = drain(f, port, tap, reads)
    assert drops == Counter()
    calls = receive(sink, 8 + 3)
    assert [len(c) for c in calls] == [2, 3, 1, 3, 2]  # 60B x2 | 72B x2 + 64B | flood | super-frame | 60B x2
    got = opened([p for c in calls for p in c])
    seqs = [seq for seq, _ in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    frames = [frame for _, frame in got]
    assert frames[:6] == [r[10:] for r in reads[:6]]
    assert frames[-2:] == [r[10:] for r in reads[-2:]]
    assert [int.from_bytes(fr[38:42], "big") for fr in frames[6:9]] == [6, 1006, 2006]  # the super-frame, cut


def test_a_gro_batch_of_sealed_acks_reaches_the_tap_frame_by_frame(engine: str) -> None:
    """What the receiver's UDP_GRO now hands over for a drain's ACKs: one batch, opened in one
    call (an SA in the table) or one by one (a new SA), every ACK its own TAP write, in order."""
    rx = FakeReceiver()
    try:
        rx.add_port(VNET, security="conf")
        rx.sas.set_keys(VNET, KEYS)
        tx = SecurityAssociations(PEER)
        tx.set_keys(VNET, KEYS)
        for _ in range(2):  # the first batch makes the SA, the second takes the `open_run` path
            acks = [tcp_frame(100 + k, payload=0) for k in range(8)]
            sealed = b"".join(tx.seal(VNET, b"\x30\x08" + a) for a in acks)
            stride = len(sealed) // len(acks)
            mv = memoryview(bytearray(RX_BUF_SIZE))
            mv[RX_OFF:RX_OFF + len(sealed)] = sealed
            rx._rx_batch(mv, RX_OFF, len(sealed), stride, PEER, ESP_PREFIX, rx.drops["esp"])
            assert rx.drop_total() == 0, rx.drops
            assert [f[10:] for f in rx.tap_frames(VNET)] == acks
        assert rx.vnets[VNET].stats[2] == 16
    finally:
        rx.close()
