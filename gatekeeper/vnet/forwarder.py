"""The data plane: frames between the VNET TAPs and the underlay, outside the asyncio loop.

Threads (reference/dataplane.md: process layout barely matters on 2 cores, the GIL costs ~8%):
  tap  - epoll over every TAP; drains up to 64 frames per wake-up into one preallocated buffer with
         the 6-byte UDP prefix reserved in front, then one sendto per frame (no copies).
  udp  - blocking recvfrom_into on UDP/1798: frames to their TAP, VARP to the control plane.
  raw  - the same for IPv4 protocol 97 (opened only when a VNET uses the raw transport; every raw
         socket gets a copy of every proto-97 packet in the namespace, so there is exactly one).

The forwarding table is the VARP cache's `fdb` dict, read without a lock; misses, learning and
VARP go through `ControlPlane`, which holds the lock. Counters are plain ints per thread, summed
at scrape time, so the hot path takes no lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from softudc.wire import ETHERIP_PROTO, VNET_PORT, WireError
from softudc.wire.udpframe import FRAME_PREFIX_LEN, frame_prefix, peek_frame

BATCH = 64
BUF_SIZE = 65536 + FRAME_PREFIX_LEN
IP_PMTUDISC_DO = 2
IP_MTU_DISCOVER = 10


class ControlPlane(Protocol):
    """What the forwarding threads call into for anything that is not a plain forward."""

    def on_miss(self, vnet: int, mac: bytes, frame: bytes) -> None: ...
    def on_stale(self, vnet: int, mac: bytes) -> None: ...
    def on_learn(self, vnet: int, mac: bytes, addr: str) -> None: ...
    def on_varp(self, buf: bytes, src: str) -> None: ...


@dataclass
class VnetPort:
    vnet: int
    fd: int
    transport: str  # "udp" | "raw"
    mtu: int
    members: tuple[str, ...] = ()
    prefix: bytes = b""
    # tx_frames, tx_bytes, rx_frames, rx_bytes, flooded
    stats: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])

    def __post_init__(self) -> None:
        self.prefix = frame_prefix(self.vnet)

    @property
    def max_frame(self) -> int:
        return self.mtu + 14 + 4  # Ethernet header and one 802.1Q tag


class Forwarder:
    def __init__(
        self,
        *,
        local_addr: str,
        group: str,
        flood: str,
        fdb: dict[tuple[int, bytes], str],
        stale: set[tuple[int, bytes]],
        seen: dict[tuple[int, bytes], float],
        local_macs: set[tuple[int, bytes]],
        control: ControlPlane,
        learn: bool = True,
        clock: Callable[[], float] = time.monotonic,
        port: int = VNET_PORT,
    ) -> None:
        self.local_addr = local_addr
        self.group = group
        self.flood_mode = flood
        self.fdb, self.stale, self.seen, self.local_macs = fdb, stale, seen, local_macs
        self.control = control
        self.learn = learn
        self.clock = clock
        self.port = port
        self.vnets: dict[int, VnetPort] = {}
        self.drops: dict[str, Counter[str]] = {"tap": Counter(), "udp": Counter(), "raw": Counter(),
                                               "ctl": Counter()}
        self.varp_rx = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._udp = self._open_udp()
        self._raw: socket.socket | None = None
        self._ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._ctl: queue.Queue[tuple[str, VnetPort, threading.Event]] = queue.Queue()

    # --- sockets ------------------------------------------------------------------------------

    def _open_udp(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        try:
            s.bind(("0.0.0.0", self.port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"cannot bind UDP port {self.port}: {e.strerror} "
                                   "(another gatekeeper in this namespace?)") from e
        self._setup_multicast(s)
        # Never fragment the outer packet: an oversize frame fails with EMSGSIZE and is counted.
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        return s

    def _setup_multicast(self, s: socket.socket) -> None:
        local = socket.inet_aton(self.local_addr)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        if self.flood_mode == "multicast":
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(self.group) + local)

    def _ensure_raw(self) -> None:
        if self._raw is not None:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, ETHERIP_PROTO)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self._setup_multicast(s)
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        self._raw = s
        self._spawn("raw", self._raw_loop)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn("tap", self._tap_loop)
        self._spawn("udp", self._udp_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=f"fwd-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        for s in (self._udp, self._raw):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=2)
        for s in (self._udp, self._raw):
            if s is not None:
                s.close()

    def add_vnet(self, port: VnetPort) -> None:
        if port.transport == "raw":
            self._ensure_raw()
        self._control("add", port)

    def remove_vnet(self, vnet: int) -> VnetPort | None:
        port = self.vnets.get(vnet)
        if port is not None:
            self._control("remove", port)
        return port

    def _control(self, op: str, port: VnetPort) -> None:
        """Registration changes run on the TAP thread, so a fd is never closed under its read."""
        done = threading.Event()
        self._ctl.put((op, port, done))
        os.write(self._wake_w, b"x")
        if not done.wait(5):
            raise RuntimeError(f"forwarder did not apply {op} of vnet {port.vnet} within 5 s")

    def _apply_control(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                op, port, done = self._ctl.get_nowait()
            except queue.Empty:
                return
            if op == "add":
                self.vnets[port.vnet] = port
                self._ep.register(port.fd, select.EPOLLIN)
            else:
                self.vnets.pop(port.vnet, None)
                with contextlib.suppress(OSError, ValueError):
                    self._ep.unregister(port.fd)
            done.set()

    # --- sending ------------------------------------------------------------------------------

    def flood_targets(self, port: VnetPort) -> tuple[str, ...]:
        if self.flood_mode == "multicast":
            return (self.group,)
        return port.members

    def send_frame(self, port: VnetPort, frame: bytes | memoryview, addr: str, drops: Counter[str]) -> None:
        """Slow-path send (queued frames, tests); the TAP loop inlines the same."""
        msg = port.prefix + bytes(frame)
        self._send(port, memoryview(msg), len(msg), addr, drops)

    def _send(self, port: VnetPort, mv: memoryview, end: int, addr: str, drops: Counter[str]) -> None:
        try:
            if port.transport == "udp":
                self._udp.sendto(mv[:end], (addr, self.port))
            else:
                assert self._raw is not None
                self._raw.sendto(mv[4:end], (addr, 0))
        except OSError as e:
            drops["send_emsgsize" if e.errno == errno.EMSGSIZE else "send_error"] += 1
            return
        port.stats[0] += 1
        port.stats[1] += end - FRAME_PREFIX_LEN

    def send_varp(self, msg: bytes, addr: str) -> None:
        try:
            self._udp.sendto(msg, (addr, self.port))
        except OSError:
            self.drops["ctl"]["varp_send_error"] += 1

    # --- threads ------------------------------------------------------------------------------

    def _tap_loop(self) -> None:
        buf = bytearray(BUF_SIZE)
        mv = memoryview(buf)
        body = mv[FRAME_PREFIX_LEN:]
        drops = self.drops["tap"]
        fdb, stale, local_macs = self.fdb, self.stale, self.local_macs
        ports_by_fd: dict[int, VnetPort] = {}
        while not self._stopping:
            events = self._ep.poll()
            for fd, _ in events:
                if fd == self._wake_r:
                    self._apply_control()
                    ports_by_fd = {p.fd: p for p in self.vnets.values()}
                    continue
                port = ports_by_fd.get(fd)
                if port is None:
                    continue
                vnet = port.vnet
                for _ in range(BATCH):
                    try:
                        n = os.readv(fd, [body])
                    except BlockingIOError:
                        break
                    except OSError:
                        drops["tap_read_error"] += 1
                        break
                    if n < 14:
                        drops["runt"] += 1
                        continue
                    if n > port.max_frame:
                        drops["oversize"] += 1
                        continue
                    mv[:FRAME_PREFIX_LEN] = port.prefix
                    end = n + FRAME_PREFIX_LEN
                    if buf[FRAME_PREFIX_LEN] & 1:  # group bit: broadcast or multicast
                        port.stats[4] += 1
                        for addr in self.flood_targets(port):
                            self._send(port, mv, end, addr, drops)
                        continue
                    key = (vnet, bytes(buf[6:12]))
                    dest = fdb.get(key)
                    if dest is not None:
                        if key in stale:
                            self.control.on_stale(vnet, key[1])
                        self._send(port, mv, end, dest, drops)
                    elif key in local_macs:
                        continue  # the bridge has not learned it yet; it already delivered locally
                    else:
                        self.control.on_miss(vnet, key[1], bytes(body[:n]))

    def _udp_loop(self) -> None:
        buf = bytearray(BUF_SIZE)
        mv = memoryview(buf)
        sock = self._udp
        drops = self.drops["udp"]
        while not self._stopping:
            try:
                n, (src, _) = sock.recvfrom_into(buf)
            except OSError:
                if self._stopping:
                    return
                drops["recv_error"] += 1
                continue
            if n == 0 and self._stopping:
                return
            if n >= 2 and buf[0] == 0 and buf[1] == 2:
                try:
                    vnet, _flags = peek_frame(buf, n)
                except WireError:
                    drops["bad_frame"] += 1
                    continue
                self._deliver(vnet, mv, FRAME_PREFIX_LEN, n, src, drops)
            elif n >= 2 and buf[0] == 0 and buf[1] == 1:
                self.varp_rx += 1
                self.control.on_varp(bytes(mv[:n]), src)
            else:
                drops["bad_message"] += 1

    def _raw_loop(self) -> None:
        buf = bytearray(BUF_SIZE)
        mv = memoryview(buf)
        assert self._raw is not None
        sock = self._raw
        drops = self.drops["raw"]
        while not self._stopping:
            try:
                n = sock.recv_into(buf)
            except OSError:
                if self._stopping:
                    return
                drops["recv_error"] += 1
                continue
            if n == 0:
                if self._stopping:
                    return
                continue
            # A raw socket hands over the outer IPv4 header too (dataplane.md pitfall 2).
            ihl = (buf[0] & 0x0F) * 4
            if n < ihl + 2 + 14:
                drops["bad_frame"] += 1
                continue
            word = (buf[ihl] << 8) | buf[ihl + 1]
            if word >> 12 != 3:
                drops["bad_frame"] += 1
                continue
            src = socket.inet_ntoa(buf[12:16])
            if src == self.local_addr:
                continue
            self._deliver(word & 0x0FFF, mv, ihl + 2, n, src, drops)

    def _deliver(self, vnet: int, mv: memoryview, off: int, end: int, src: str, drops: Counter[str]) -> None:
        port = self.vnets.get(vnet)
        if port is None:
            drops["not_member"] += 1
            return
        if end - off > port.max_frame:
            drops["oversize"] += 1
            return
        if self.learn and not mv[off + 6] & 1:
            key = (vnet, bytes(mv[off + 6:off + 12]))
            if self.fdb.get(key) == src:
                self.seen[key] = self.clock()
            elif key not in self.local_macs:
                self.control.on_learn(vnet, key[1], src)
        try:
            os.write(port.fd, mv[off:end])
        except OSError:
            drops["tap_write_error"] += 1
            return
        port.stats[2] += 1
        port.stats[3] += end - off


def mtu_for(transport: str, underlay_mtu: int) -> int:
    """Largest inner MTU whose encapsulated packet fits the underlay (DESIGN.md, "MTU")."""
    overhead = 20 + 2 + 14 if transport == "raw" else 20 + 8 + FRAME_PREFIX_LEN + 14
    return underlay_mtu - overhead


