"""vnetd's relay decisions on simulated topologies: every packet reaches every segment exactly
once, whatever the peering (mesh, chain, triangle), and nothing loops."""

from __future__ import annotations

import itertools
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vnetd.core import MAX_ORIGINS, Command, Hello, Inject, Relay, RelayCore


def udp_to_group(payload: bytes, dport: int = 1798, dst: str = "224.10.0.1", proto: int = 17,
                 flags_frag: int = 0) -> bytes:
    """An IPv4/UDP packet as vnetd captures it (checksums are not vnetd's business here)."""
    udp = struct.pack("!HHHH", 1798, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, flags_frag, 1, proto, 0,
                     socket.inet_aton("10.0.0.1"), socket.inet_aton(dst))
    return ip + udp


PKT = udp_to_group(b"broadcast frame")
WALL0 = 1_700_000_000 * 10**9  # the wall clock at monotonic 0.0, in ns


def relayed(node: RelayCore, peer: str, origin: str, seq: int, hops: int, packet: bytes, now: float,
            sent_at: float | None = None) -> list[Command]:
    """`node` receives a relay message sent at `sent_at` (default: now) by the senders' clock."""
    sent = now if sent_at is None else sent_at
    return node.relayed(peer, origin, seq, hops, packet, now, sent_ns=WALL0 + int(sent * 1e9),
                        wall_ns=WALL0 + int(now * 1e9))


def network(edges: list[tuple[str, str]]) -> dict[str, RelayCore]:
    nodes: dict[str, RelayCore] = {}
    for a, b in edges:
        nodes.setdefault(a, RelayCore(a)).add_peer(b)
        nodes.setdefault(b, RelayCore(b)).add_peer(a)
    return nodes


def flood(nodes: dict[str, RelayCore], start: str) -> dict[str, int]:
    injected = dict.fromkeys(nodes, 0)
    queue = [(start, c) for c in nodes[start].local(PKT, 0.0)]
    while queue:
        sender, cmd = queue.pop(0)
        assert isinstance(cmd, Relay)
        for out in relayed(nodes[cmd.peer], sender, cmd.origin, cmd.seq, cmd.hops, cmd.packet, 0.0):
            if isinstance(out, Inject):
                injected[cmd.peer] += 1
            else:
                queue.append((cmd.peer, out))
    return injected


TOPOLOGIES = {
    "triangle": [("a", "b"), ("b", "c"), ("a", "c")],
    "chain": [("a", "b"), ("b", "c"), ("c", "d")],
    "mesh4": list(itertools.combinations("abcd", 2)),
    "ring5": [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "a")],
}


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_every_segment_gets_each_packet_exactly_once(name: str) -> None:
    for start in {n for e in TOPOLOGIES[name] for n in e}:
        nodes = network(TOPOLOGIES[name])
        got = flood(nodes, start)
        assert got == {n: (0 if n == start else 1) for n in nodes}, (name, start, got)


def test_our_own_injection_is_not_captured_again() -> None:
    a = RelayCore("a")
    a.add_peer("b")
    relayed(a, "b", "b", 1, 0, PKT, 0.0)
    assert a.local(PKT, 0.5) == []  # seen on the segment right after we injected it
    assert a.local(PKT, 5.0) != []  # a later identical packet is a new packet


def test_peers_go_down_and_come_back() -> None:
    a = RelayCore("a", hello_interval=1.0)
    a.add_peer("b")
    assert a.tick(0.0) == [Hello("b")]
    a.hello("b", 0.1)
    assert a.peers["b"].up
    a.tick(10.0)
    assert not a.peers["b"].up and a.counts["peer_down"] == 1
    a.hello("b", 11.0)
    assert a.peers["b"].up


def test_relays_from_strangers_are_ignored() -> None:
    a = RelayCore("a")
    assert relayed(a, "x", "x", 1, 0, PKT, 0.0) == []
    assert a.counts["from_unknown_peer"] == 1


def test_a_restarted_origin_is_not_mistaken_for_duplicates() -> None:
    b = RelayCore("b")
    b.add_peer("a")
    first = RelayCore("a", seq=1_000)
    first.add_peer("b")
    relay = first.local(PKT, 0.0)[0]
    assert isinstance(relay, Relay)
    assert relayed(b, "a", relay.origin, relay.seq, 0, PKT, 0.0)
    restarted = RelayCore("a", seq=2_000)  # the daemon seeds seq from the wall clock
    restarted.add_peer("b")
    relay2 = restarted.local(PKT, 5.0)[0]
    assert isinstance(relay2, Relay)
    assert any(isinstance(c, Inject) for c in relayed(b, "a", relay2.origin, relay2.seq, 0, PKT, 5.0))


def _pair() -> tuple[RelayCore, Relay]:
    """b peers with a; one relay message from a, as a captured it."""
    a, b = RelayCore("a", seq=5_000), RelayCore("b")
    a.add_peer("b")
    b.add_peer("a")
    msg = a.local(PKT, 0.0)[0]
    assert isinstance(msg, Relay)
    return b, msg


@pytest.mark.adversarial
@pytest.mark.parametrize("later", [1.0, 10.0, 29.0, 31.0, 45.0, 59.0, 3600.0])
def test_r23_a_replayed_relay_message_is_never_injected_again(later: float) -> None:
    """The audit's vnetd_replay.py: the replay at +10 s was dropped, the one at +31 s injected."""
    b, msg = _pair()
    assert Inject(PKT) in relayed(b, "a", msg.origin, msg.seq, 0, PKT, 0.0)
    # The attacker captured the message and sends it again later, as it was (its timestamp too).
    assert relayed(b, "a", msg.origin, msg.seq, 0, PKT, later, sent_at=0.0) == []
    assert b.counts.get("injected") == 1
    assert b.counts.get("duplicate", 0) + b.counts.get("stale", 0) == 1


@pytest.mark.adversarial
def test_r23_sequence_numbers_only_move_forward_per_origin() -> None:
    b, msg = _pair()
    top = msg.seq + 10_000
    assert Inject(PKT) in relayed(b, "a", "a", top, 0, PKT, 0.0)
    assert Inject(PKT) in relayed(b, "a", "a", top - 3, 0, PKT, 0.1)  # late by another path: once
    assert relayed(b, "a", "a", top - 3, 0, PKT, 0.2) == []
    assert relayed(b, "a", "a", top - 5_000, 0, PKT, 0.3) == []  # older than the window: never
    assert (b.counts["duplicate"], b.counts["too_old"]) == (1, 1)
    assert Inject(PKT) in relayed(b, "a", "a", top + 1, 0, PKT, 0.4)


def test_r23_an_origin_whose_clock_went_back_is_heard_again_after_twice_the_window() -> None:
    b, msg = _pair()
    assert Inject(PKT) in relayed(b, "a", "a", msg.seq, 0, PKT, 0.0)
    restarted = msg.seq - 10**9  # its new sequence numbers start a second lower
    assert relayed(b, "a", "a", restarted, 0, PKT, 30.0) == []
    assert Inject(PKT) in relayed(b, "a", "a", restarted + 1, 0, PKT, 61.0)
    assert b.counts["origin_restarted"] == 1
    assert Inject(PKT) in relayed(b, "a", "a", restarted + 2, 0, PKT, 61.1)


@pytest.mark.adversarial
def test_r23_stale_timestamps_are_refused() -> None:
    b, msg = _pair()
    assert relayed(b, "a", msg.origin, msg.seq, 0, PKT, 100.0, sent_at=69.0) == []
    assert relayed(b, "a", msg.origin, msg.seq, 0, PKT, 100.0, sent_at=131.0) == []
    assert b.counts["stale"] == 2
    assert Inject(PKT) in relayed(b, "a", msg.origin, msg.seq, 0, PKT, 100.0, sent_at=99.0)


@pytest.mark.adversarial
@pytest.mark.parametrize("packet", [
    udp_to_group(b"x", dst="10.0.0.9"),          # unicast: would reach a host directly
    udp_to_group(b"x", dst="224.10.0.2"),        # another group
    udp_to_group(b"x", dport=22),                # not a relayed port
    udp_to_group(b"x", proto=6),                 # TCP
    udp_to_group(b"x", flags_frag=0x2000),       # a fragment (more fragments)
    udp_to_group(b"x")[:-1],                     # length does not match the header
    bytes(40),                                   # not IPv4
])
def test_r23_only_udp_to_the_group_on_a_relayed_port_is_injected_or_relayed_on(packet: bytes) -> None:
    b, msg = _pair()
    b.add_peer("c")
    assert relayed(b, "a", msg.origin, msg.seq, 0, packet, 0.0) == []
    assert b.counts["not_relayable"] == 1
    assert Inject(PKT) in relayed(b, "a", msg.origin, msg.seq, 0, PKT, 0.1)  # the name was not used up


@pytest.mark.adversarial
@given(st.binary(max_size=80), st.integers(0, 2**64 - 1), st.floats(-100, 100))
def test_r23_any_relayed_input_is_injected_only_when_well_formed_and_new(
        packet: bytes, seq: int, skew: float) -> None:
    b, _ = _pair()
    out = relayed(b, "a", "a", seq, 0, packet, 50.0, sent_at=50.0 + skew)
    if out:
        assert out[0] == Inject(packet) and abs(skew) <= 30.0
        assert packet[16:20] == socket.inet_aton("224.10.0.1") and packet[9] == 17
    assert relayed(b, "a", "a", seq, 0, packet, 50.0, sent_at=50.0 + skew) == []


def test_r23_origins_remembered_are_bounded() -> None:
    b = RelayCore("b")
    b.add_peer("a")
    for i in range(MAX_ORIGINS + 500):
        relayed(b, "a", f"10.1.{i // 256}.{i % 256}", 1, 0, PKT, 0.0)
    assert len(b._origins) == MAX_ORIGINS and b.counts["origin_forgotten"] == 500
