"""The real receive code (`Receiver`) around fake sockets and TAPs, for the receive-path tests.

A TAP is one end of an AF_UNIX datagram socketpair: `os.write` on it is one frame, and the test
reads the frames back from the other end. A socket is `StubSocket`: it hands over prepared
datagrams the way `recvmsg_into`/`recv_into` do, `None` in its queue ends a drained batch
(the next MSG_DONTWAIT read finds nothing), and when it runs dry the loop is told to stop.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from gatekeeper.vnet.esp_sa import SecurityAssociations
from gatekeeper.vnet.port import VnetPort
from gatekeeper.vnet.receive import Receiver
from gatekeeper.vnet.supervisor import RateLimitedLog

LOCAL = "10.0.0.2"
PEER = "10.0.0.1"
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")

# What a socket read hands over: (datagram, source address). A sealed ESP packet may be a bytearray.
Datagram = tuple[bytes | bytearray, str]


class FakeControl:
    """The control plane as the forwarding threads see it: records every call."""

    def __init__(self) -> None:
        self.misses: list[tuple[int, bytes]] = []
        self.learned: list[tuple[int, bytes, str]] = []
        self.varp: list[tuple[bytes, str]] = []

    def on_miss(self, vnet: int, mac: bytes, frame: bytes) -> None:
        self.misses.append((vnet, mac))

    def on_stale(self, vnet: int, mac: bytes) -> None:
        pass

    def on_learn(self, vnet: int, mac: bytes, addr: str) -> None:
        self.learned.append((vnet, mac, addr))

    def on_varp(self, buf: bytes, src: str) -> None:
        self.varp.append((buf, src))


class StubSocket:
    def __init__(self, owner: FakeReceiver, items: Sequence[Datagram | None], raw: bool = False) -> None:
        self.owner, self.items, self.raw = owner, list(items), raw

    def _next(self, flags: int) -> Datagram:
        while True:
            if not self.items:
                if flags & socket.MSG_DONTWAIT:
                    raise BlockingIOError
                self.owner._stopping = True  # the test's input is used up: the loop returns
                raise OSError("stub socket closed")
            item = self.items.pop(0)
            if item is not None:
                return item
            if flags & socket.MSG_DONTWAIT:
                raise BlockingIOError

    def recvmsg_into(self, buffers: list[memoryview], ancbufsize: int, flags: int = 0) -> tuple[int, list[Any], int,
                                                                                                 tuple[str, int]]:
        data, src = self._next(flags)
        buffers[0][:len(data)] = data
        return len(data), [], 0, (src, 1798)

    def recv_into(self, buf: memoryview, nbytes: int = 0, flags: int = 0) -> int:
        data, _src = self._next(flags)  # raw sockets: the source is in the outer header
        buf[:len(data)] = data
        return len(data)


class FakeReceiver(Receiver):
    """`Receiver` with every attribute it relies on, and TAPs the test can read."""

    control: FakeControl  # what the receive loops called, for the test to read back

    def __init__(self, learn: bool = True) -> None:
        self.vnets: dict[int, VnetPort] = {}
        self.drops: dict[str, Counter[str]] = {k: Counter() for k in ("tap", "udp", "raw", "esp", "ctl")}
        self.control = FakeControl()
        self.sas = SecurityAssociations(LOCAL)
        self.fdb: dict[tuple[int, bytes], str] = {}
        self.seen: dict[tuple[int, bytes], float] = {}
        self.local_macs: set[tuple[int, bytes]] = set()
        self.learn = learn
        self.clock = time.monotonic
        self.local_addr = LOCAL
        self.varp_rx = 0
        self._stopping = False
        self._raw = None
        self._esp = None
        self._errlog = RateLimitedLog(logging.getLogger("test.dataplane"))
        self._taps: dict[int, socket.socket] = {}

    def add_port(self, vnet: int, *, offload: bool = True, security: str = "none", transport: str = "udp",
                 members: tuple[str, ...] = (), mtu: int = 1450, sink: bool = False) -> VnetPort:
        """A VNET whose TAP the test reads (at most 10 frames queue: net.unix.max_dgram_qlen; more
        count as tap_write_error), or with `sink` one that takes anything (/dev/null)."""
        if sink:
            fd = os.open(os.devnull, os.O_WRONLY)
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            theirs.setblocking(False)
            ours.setblocking(False)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            fd = ours.detach()
            self._taps[vnet] = theirs
        port = VnetPort(vnet, fd, transport, mtu, members, offload, security)
        self.vnets[vnet] = port
        return port

    def tap_frames(self, vnet: int) -> list[bytes]:
        """Everything written to the VNET's TAP so far (virtio header included on offload ports)."""
        out = []
        while True:
            try:
                out.append(self._taps[vnet].recv(1 << 17))
            except BlockingIOError:
                return out

    def close(self) -> None:
        for port in self.vnets.values():
            os.close(port.fd)
        for s in self._taps.values():
            s.close()

    def drop_total(self) -> int:
        return sum(sum(c.values()) for c in self.drops.values())

    def rx_datagrams(self) -> int:
        return sum(p.stats[6] for p in self.vnets.values())

    def run_udp(self, items: Sequence[Datagram | None]) -> None:
        """The real UDP/1798 receive loop over `items`; returns when they are used up."""
        self._stopping = False
        self._udp = StubSocket(self, items)  # type: ignore[assignment]
        self._udp_loop()

    def run_esp(self, items: Sequence[Datagram | None]) -> None:
        self._stopping = False
        self._esp = StubSocket(self, items)  # type: ignore[assignment]
        self._esp_loop()

    def run_raw(self, items: Sequence[Datagram | None]) -> None:
        self._stopping = False
        self._raw = StubSocket(self, items, raw=True)  # type: ignore[assignment]
        self._raw_loop()


def ipv4(proto: int, payload_len: int, src: str = "192.168.1.1", dst: str = "192.168.1.2", ihl: int = 5,
         ident: int = 1) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + payload_len, ident, 0x4000, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr + bytes(ihl * 4 - 20)


def tcp(seq: int, data_offset: int = 5, flags: int = 0x10) -> bytes:
    """A TCP header whose data offset field says `data_offset` words (the bytes are always 20)."""
    return struct.pack("!HHIIBBHHH", 1, 2, seq, 0, data_offset << 4, flags, 100, 0, 0)


def eth(dst: bytes = MAC_B, src: bytes = MAC_A) -> bytes:
    return dst + src + b"\x08\x00"


def tcp_frame(seq: int, data_offset: int = 5, payload: int = 600, flags: int = 0x10) -> bytes:
    return eth() + ipv4(6, 20 + payload) + tcp(seq, data_offset, flags) + bytes(payload)


def udp_datagram(vnet: int, frame: bytes, flags: int = 0) -> bytes:
    """A SoftUDC frame message: id 2, flags, EtherIP header (version 3, the VNET id), the frame."""
    return struct.pack("!HHH", 2, flags, 0x3000 | vnet) + frame


def raw_packet(vnet: int, frame: bytes, src: str = PEER, dst: str = LOCAL, ident: int = 1) -> bytes:
    """What a raw protocol-97 socket hands over: outer IPv4 header, EtherIP header, frame."""
    body = struct.pack("!H", 0x3000 | vnet) + frame
    return ipv4(97, len(body), src, dst, ident=ident) + body


def r2_pair(vnet: int = 5) -> list[bytes]:
    """The audit's R2 datagrams: equal-sized frame messages, TCP data offset 0, ACK, seq 1000/1600."""
    return [udp_datagram(vnet, tcp_frame(seq, data_offset=0)) for seq in (1000, 1600)]


def use_esp_engine(name: str) -> Iterator[str]:
    """For a fixture: ESP sealed and opened by `name` ("native" or "python") until it resumes."""
    from gatekeeper.vnet import esp_native

    lib = esp_native._lib
    if name == "native":
        assert lib is not None, f"the native ESP library is not built: {esp_native.WHY}"
    else:
        esp_native._lib = None
    try:
        assert esp_native.engine() == name
        yield name
    finally:
        esp_native._lib = lib
