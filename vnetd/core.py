"""What vnetd decides, without I/O: which captured packets to relay, which relayed ones to inject,
where to forward them, and which peers are alive. Clocks injected; returns commands.

    event                         condition                         commands
    ---------------------------   -------------------------------   -------------------------------
    local(packet)                 we injected these bytes recently  - (our own re-injection)
    local(packet)                 otherwise                         Relay to every peer (seq = ours+1)
    relay(msg) from peer P        P is not a peer                   - (from_unknown_peer)
    relay(msg) from peer P        origin is us                      - (came back around a loop)
    relay(msg) from peer P        not UDP to the group on a         - (not_relayable: vnetd injects
                                  relayed port                        nothing else onto a segment)
    relay(msg) from peer P        timestamp outside the window      - (stale)
    relay(msg) from peer P        (origin, seq) seen, or seq older  - (duplicate, too_old)
                                  than the origin's window
    relay(msg) from peer P        new                               Inject(packet); Relay to every
                                                                    peer but P and the origin, hops+1
    hello from P                                                    P marked up
    tick                          hello due                         Hello to every peer
    tick                          P silent for 3 hello intervals    P marked down

Loops and duplicates cannot survive any peer topology (mesh, chain, triangle): every packet has
one (origin, seq) name, and each vnetd acts on a name once. A relay never goes back to the peer
it came from, and hops are bounded.

Replays (audit R23): each origin's sequence numbers only move forward. Like ESP's anti-replay
window (RFC 4303 §3.4.3), a vnetd keeps per origin the highest number it accepted and a bitmap of
the SEQ_WINDOW numbers below it: a copy that arrives late by another path is still accepted once,
anything seen or older than the window never again, however late it is replayed. The timestamp
window (FRESH_S) covers what a vnetd cannot remember: messages captured before it restarted. An
origin restarts with a larger sequence number (seeded from its wall clock); if its clock went back,
its numbers restart below the window, and that is accepted once nothing was accepted from it for
twice the timestamp window (by then every message of its previous run is stale).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

from softudc.wire.relay import MAX_HOPS

INJECTED_TTL = 2.0
FRESH_S = 30.0  # a relay message's timestamp may be this far from our clock (was 60 s; audit R23)
SEQ_WINDOW = 4096  # how far behind an origin's newest message a copy by another path may arrive
MAX_ORIGINS = 1024  # origins remembered (least recently heard forgotten first); only key holders add any
DEFAULT_GROUP = "224.10.0.1"
DEFAULT_PORTS = (1798, 4500)


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
class OriginWindow:
    """What we accepted from one origin: its highest sequence number, and which of the
    SEQ_WINDOW numbers below it (bit i: top - i)."""

    top: int
    accepted_at: float  # our monotonic clock when we last accepted something from it
    bits: int = 1

    def check(self, seq: int) -> str | None:
        if seq > self.top:
            return None
        if self.top - seq >= SEQ_WINDOW:
            return "too_old"
        return "duplicate" if self.bits >> (self.top - seq) & 1 else None

    def accept(self, seq: int, now: float) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << SEQ_WINDOW) - 1) if shift < SEQ_WINDOW else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)
        self.accepted_at = now


def relayable(packet: bytes, group: bytes, ports: tuple[int, ...]) -> str | None:
    """Why vnetd must not inject `packet` onto its segment, or None: only what it would have
    captured itself (IPv4 UDP to the VARP group on a relayed port, not fragmented) may go out."""
    if len(packet) < 28 or packet[0] >> 4 != 4:
        return "not_ipv4"
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl + 8 or int.from_bytes(packet[2:4], "big") != len(packet):
        return "bad_length"
    if packet[9] != 17 or int.from_bytes(packet[6:8], "big") & 0x3FFF:  # UDP; no MF flag, offset 0
        return "not_udp"
    if packet[16:20] != group:
        return "not_to_group"
    if int.from_bytes(packet[ihl + 2:ihl + 4], "big") not in ports:
        return "not_relayed_port"
    return None


@dataclass
class RelayCore:
    me: str
    peers: dict[str, Peer] = field(default_factory=dict)
    hello_interval: float = 1.0
    seq: int = 0
    group: str = DEFAULT_GROUP
    ports: tuple[int, ...] = DEFAULT_PORTS
    counts: dict[str, int] = field(default_factory=dict)
    _origins: OrderedDict[str, OriginWindow] = field(default_factory=OrderedDict)
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
        self._count("captured")
        out: list[Command] = [Relay(p, self.me, self.seq, 0, packet) for p in self.peers]
        for p in self.peers.values():
            p.tx += 1
        return out

    def fresh(self, sent_ns: int, wall_ns: int) -> bool:
        """A message's timestamp is within FRESH_S of our wall clock."""
        return abs(wall_ns - sent_ns) <= FRESH_S * 1e9

    def relayed(self, peer: str, origin: str, seq: int, hops: int, packet: bytes, now: float, *,
                sent_ns: int, wall_ns: int) -> list[Command]:
        """A relay message from `peer` (its MAC verified), sent at `sent_ns` by the peer's wall
        clock; `now` is our monotonic clock, `wall_ns` our wall clock."""
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
        why = relayable(packet, ipaddress.IPv4Address(self.group).packed, self.ports)
        if why is not None:
            self._count("not_relayable")
            self._count(f"not_relayable_{why}")
            return []
        if not self.fresh(sent_ns, wall_ns):
            self._count("stale")
            return []
        why = self._sequence_refused(origin, seq, now)
        if why is not None:
            self._count(why)
            return []
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

    def _sequence_refused(self, origin: str, seq: int, now: float) -> str | None:
        """Accept (origin, seq) once, or say why not (duplicate, too_old)."""
        window = self._origins.get(origin)
        if window is None:
            window = self._origins[origin] = OriginWindow(seq, now)
            if len(self._origins) > MAX_ORIGINS:
                self._origins.popitem(last=False)
                self._count("origin_forgotten")
            return None
        self._origins.move_to_end(origin)
        why = window.check(seq)
        if why == "too_old" and now - window.accepted_at > 2 * FRESH_S:
            # Nothing accepted from it for twice the timestamp window: whatever it sent before is
            # stale by now, so this is a restart whose clock went back, not a replay.
            self._origins[origin] = OriginWindow(seq, now)
            self._count("origin_restarted")
            return None
        if why is None:
            window.accept(seq, now)
        return why

    def _expire(self, now: float) -> None:
        while self._injected and next(iter(self._injected.values())) < now - INJECTED_TTL:
            self._injected.popitem(last=False)
