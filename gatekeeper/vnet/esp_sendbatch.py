"""Sealed single frames of one TAP drain, gathered for one UDP_SEGMENT send.

A TAP gives the ACK direction of a TCP flow one small frame at a time (no super-frame). Each is
sealed into its own ESP packet (own sequence number, IV and tag, as before); consecutive packets to
the same address with the same size (the last may be shorter) wait here until the drain ends or a
packet that does not fit comes, then leave in one sendmsg with UDP_SEGMENT. The kernel sends them
as one GSO packet, so the receiver's UDP_GRO hands them over as one batch too (one recvmsg and one
C call to open them, not one of each per ACK).

Order is kept: the TAP thread flushes before any frame it sends another way (flooded, slow path,
super-frame), and at the end of every drain, so nothing waits past the read that found the TAP
empty (no added latency: a lone ping leaves as before).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from gatekeeper.vnet.port import MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD, VnetPort

# (data, packet size, count, addr, drops) -> packets sent, in as few UDP_SEGMENT sends as it can
Send = Callable[[memoryview, int, int, str, Counter[str]], int]


class SendBatch:
    """Packets for one address, back to back in a preallocated buffer (one per TAP thread)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.buf = bytearray(MAX_UDP_PAYLOAD)
        self.used = 0
        self.size = 0
        self.count = 0
        self.closed = False  # a shorter packet ended the run: UDP_SEGMENT allows only the last one
        self.addr = ""
        self.port: VnetPort | None = None

    def fits(self, port: VnetPort, addr: str, n: int) -> bool:
        """Whether a packet of n bytes may join (same port, address, size; room left)."""
        if self.count == 0:
            return True
        return (not self.closed and port is self.port and addr == self.addr and n <= self.size
                and self.count < MAX_GSO_SEGMENTS and self.used + n <= len(self.buf))

    def add(self, port: VnetPort, addr: str, packet: bytes | bytearray | memoryview) -> None:
        """Append a packet; the caller checked `fits` (and flushed if not)."""
        n = len(packet)
        if self.count == 0:
            self.port, self.addr, self.size, self.closed = port, addr, n, False
        elif n < self.size:
            self.closed = True
        self.buf[self.used:self.used + n] = packet
        self.used += n
        self.count += 1

    def flush(self, drops: Counter[str]) -> None:
        """Send what waits (if anything) and account for it in the port's counters (send
        errors in `drops`)."""
        if self.count == 0:
            return
        port, used, count = self.port, self.used, self.count
        self.used = self.count = 0
        self.port = None
        sent = self.send(memoryview(self.buf)[:used], self.size, count, self.addr, drops)
        assert port is not None
        port.count_sent(sent, used)
