"""What vnetd decides, without I/O: which captured packets to relay, which relayed ones to inject,
where to forward them, and which peers are alive. Clock injected; returns commands.

    event                         condition                         commands
    ---------------------------   -------------------------------   -------------------------------
    local(packet)                 we injected these bytes recently  - (our own re-injection)
    local(packet)                 otherwise                         Relay to every peer (seq = ours+1)
    relay(msg) from peer P        (origin, seq) seen before         - (counted duplicate)
    relay(msg) from peer P        origin is us                      - (came back around a loop)
    relay(msg) from peer P        new                               Inject(packet); Relay to every
                                                                    peer but P and the origin, hops+1
    hello from P                                                    P marked up
    tick                          hello due                         Hello to every peer
    tick                          P silent for 3 hello intervals    P marked down

Loops and duplicates cannot survive any peer topology (mesh, chain, triangle): every packet has
one (origin, seq) name, and each vnetd acts on a name once. A relay never goes back to the peer
it came from, and hops are bounded.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from softudc.wire.relay import MAX_HOPS

SEEN_TTL = 30.0
INJECTED_TTL = 2.0


@dataclass(frozen=True, slots=True)
class Relay:
    peer: str
    origin: str
    seq: int
    hops: int
    packet: bytes


@dataclass(frozen=True, slots=True)
class Inject:
    packet: bytes


@dataclass(frozen=True, slots=True)
class Hello:
    peer: str


Command = Relay | Inject | Hello


@dataclass
class Peer:
    address: str
    up: bool = False
    last_seen: float | None = None
    tx: int = 0
    rx: int = 0


@dataclass
class RelayCore:
    me: str
    peers: dict[str, Peer] = field(default_factory=dict)
    hello_interval: float = 1.0
    seq: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    _seen: OrderedDict[tuple[str, int], float] = field(default_factory=OrderedDict)
    _injected: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    _next_hello: float = 0.0

    def add_peer(self, address: str) -> None:
        if address != self.me:
            self.peers.setdefault(address, Peer(address))

    def remove_peer(self, address: str) -> None:
        self.peers.pop(address, None)

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    @staticmethod
    def _digest(packet: bytes) -> bytes:
        # TTL (byte 8) and the header checksum (10-11) may change on the way; the rest may not.
        return hashlib.sha256(packet[:8] + packet[9:10] + packet[12:]).digest()

    def local(self, packet: bytes, now: float) -> list[Command]:
        self._expire(now)
        if self._digest(packet) in self._injected:
            self._count("own_injection_ignored")
            return []
        self.seq += 1
        self._seen[(self.me, self.seq)] = now
        self._count("captured")
        out: list[Command] = [Relay(p, self.me, self.seq, 0, packet) for p in self.peers]
        for p in self.peers.values():
            p.tx += 1
        return out

    def relayed(self, peer: str, origin: str, seq: int, hops: int, packet: bytes, now: float) -> list[Command]:
        self._expire(now)
        sender = self.peers.get(peer)
        if sender is None:
            self._count("from_unknown_peer")
            return []
        sender.rx += 1
        self._alive(sender, now)
        if origin == self.me:
            self._count("looped_back")
            return []
        if (origin, seq) in self._seen:
            self._count("duplicate")
            return []
        self._seen[(origin, seq)] = now
        self._injected[self._digest(packet)] = now
        self._count("injected")
        out: list[Command] = [Inject(packet)]
        if hops + 1 <= MAX_HOPS:
            for p in self.peers.values():
                if p.address not in (peer, origin):
                    out.append(Relay(p.address, origin, seq, hops + 1, packet))
                    p.tx += 1
        return out

    def hello(self, peer: str, now: float) -> None:
        p = self.peers.get(peer)
        if p is None:
            self._count("from_unknown_peer")
            return
        p.rx += 1
        self._alive(p, now)

    def _alive(self, p: Peer, now: float) -> None:
        if not p.up:
            self._count("peer_up")
        p.up, p.last_seen = True, now

    def tick(self, now: float) -> list[Command]:
        self._expire(now)
        for p in self.peers.values():
            if p.up and p.last_seen is not None and now - p.last_seen > 3 * self.hello_interval:
                p.up = False
                self._count("peer_down")
        if now < self._next_hello:
            return []
        self._next_hello = now + self.hello_interval
        return [Hello(p) for p in self.peers]

    def _expire(self, now: float) -> None:
        while self._seen and next(iter(self._seen.values())) < now - SEEN_TTL:
            self._seen.popitem(last=False)
        while self._injected and next(iter(self._injected.values())) < now - INJECTED_TTL:
            self._injected.popitem(last=False)
