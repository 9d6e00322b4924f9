"""vnetd's relay decisions on simulated topologies: every packet reaches every segment exactly
once, whatever the peering (mesh, chain, triangle), and nothing loops."""

from __future__ import annotations

import itertools

import pytest

from vnetd.core import Hello, Inject, Relay, RelayCore

PKT = bytes([0x45]) + bytes(7) + b"\x01" + bytes(11) + b"broadcast frame"


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
        for out in nodes[cmd.peer].relayed(sender, cmd.origin, cmd.seq, cmd.hops, cmd.packet, 0.0):
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
    a.relayed("b", "b", 1, 0, PKT, 0.0)
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
    assert a.relayed("x", "x", 1, 0, PKT, 0.0) == []
    assert a.counts["from_unknown_peer"] == 1


def test_a_restarted_origin_is_not_mistaken_for_duplicates() -> None:
    b = RelayCore("b")
    b.add_peer("a")
    first = RelayCore("a", seq=1_000)
    first.add_peer("b")
    relay = first.local(PKT, 0.0)[0]
    assert isinstance(relay, Relay)
    assert b.relayed("a", relay.origin, relay.seq, 0, PKT, 0.0)
    restarted = RelayCore("a", seq=2_000)  # the daemon seeds seq from the wall clock
    restarted.add_peer("b")
    relay2 = restarted.local(PKT, 5.0)[0]
    assert isinstance(relay2, Relay)
    assert any(isinstance(c, Inject) for c in b.relayed("a", relay2.origin, relay2.seq, 0, PKT, 5.0))
