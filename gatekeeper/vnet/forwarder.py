"""The data plane: frames between the VNET TAPs and the underlay, outside the asyncio loop.

Threads (reference/dataplane.md: process layout barely matters on 2 cores, the GIL costs ~8%):
  tap  - epoll over every TAP; drains up to 64 frames per wake-up into one preallocated buffer with
         the 6-byte UDP prefix reserved in front, then one sendto per frame (no copies).
  udp  - blocking recvfrom_into on UDP/1798: frames to their TAP, VARP to the control plane.
  raw  - the same for IPv4 protocol 97 (opened only when a VNET uses the raw transport; every raw
         socket gets a copy of every proto-97 packet in the namespace, so there is exactly one).

UDP VNETs use TAP offloads (IFF_VNET_HDR, TUNSETOFFLOAD CSUM|TSO4): a TCP super-frame of up to
64 KiB is read at once, cut into MSS-sized frames (`offload.segment`) and sent with one sendmsg
and UDP_SEGMENT; the receive socket has UDP_GRO, and consecutive segments are merged back into
one super-frame per TAP write (`offload.coalesce`). Nothing is IP-fragmented on the underlay.

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
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gatekeeper.vnet import offload
from gatekeeper.vnet.offload import NO_VNET_HDR, VNET_HDR_LEN, OffloadError
from softudc.wire import ETHERIP_PROTO, VNET_PORT, WireError
from softudc.wire.udpframe import FLAG_CSUM_PARTIAL, FRAME_PREFIX_LEN, frame_prefix, peek_frame

BATCH = 64
BUF_SIZE = 65536 + 64
IP_PMTUDISC_DO = 2
IP_MTU_DISCOVER = 10
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_GSO_SEGMENTS = 64
MAX_UDP_PAYLOAD = 65507
# Received datagrams land at RX_OFF, so a virtio header fits in front of the frame.
RX_OFF = 16
MAX_BATCH = 64
MIN_BATCH_STRIDE = 512  # small datagrams (ACKs, VARP) are not worth batching
RX_BUF_SIZE = RX_OFF + MAX_BATCH * 1600 + BUF_SIZE
# Raw transport: the outer IPv4 header (20 bytes, no options) and the EtherIP header come first.
RAW_PREFIX_LEN = 22
# Outer total length, id and checksum may differ between the packets of one batch.
RAW_PREFIX_MASK = bytes([0xFF, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0] + [0xFF] * 10)


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
    offload: bool = False  # the TAP carries a virtio_net_hdr (UDP transport only)
    prefix: bytes = b""
    prefix_partial: bytes = b""
    # tx_frames, tx_bytes, rx_frames, rx_bytes, flooded, tx_datagrams, rx_datagrams, tx_superframes, rx_superframes
    stats: list[int] = field(default_factory=lambda: [0] * 9)

    def __post_init__(self) -> None:
        self.prefix = frame_prefix(self.vnet)
        self.prefix_partial = frame_prefix(self.vnet, FLAG_CSUM_PARTIAL)

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
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
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

    def send_frame(self, port: VnetPort, frame: bytes, addr: str, drops: Counter[str]) -> None:
        """Slow-path send of a frame as read from the TAP (queued frames): same as the TAP loop."""
        buf = bytearray(FRAME_PREFIX_LEN) + frame
        self._emit(port, memoryview(buf), len(buf), (addr,), drops)

    def _emit(self, port: VnetPort, mv: memoryview, end: int, targets: tuple[str, ...], drops: Counter[str]) -> None:
        """Send what the TAP gave us, which sits at mv[FRAME_PREFIX_LEN:end] (behind a virtio
        header on offload ports), to every target."""
        start = FRAME_PREFIX_LEN
        if port.offload:
            flags, gso_type = mv[start], mv[start + 1]
            if gso_type:
                self._emit_gso(port, mv, end, targets, drops)
                return
            csum_start = mv[start + 6] | mv[start + 7] << 8
            csum_offset = mv[start + 8] | mv[start + 9] << 8
            start += VNET_HDR_LEN
            partial = bool(flags & 1)
            if partial and port.transport == "raw":
                # A plain EtherIP receiver must never see a partial checksum: finish it here.
                if start + csum_start + csum_offset + 2 > end:
                    drops["bad_csum_offsets"] += 1
                    return
                offload.complete_csum(mv, start + csum_start, csum_offset, end)
                partial = False
            mv[start - FRAME_PREFIX_LEN:start] = port.prefix_partial if partial else port.prefix
        else:
            mv[:FRAME_PREFIX_LEN] = port.prefix
        for addr in targets:
            self._send(port, mv, start - FRAME_PREFIX_LEN, end, addr, drops)

    def _emit_gso(self, port: VnetPort, mv: memoryview, end: int, targets: tuple[str, ...],
                  drops: Counter[str]) -> None:
        """A TCP super-frame: cut in userspace, then one UDP_SEGMENT send (UDP transport) or one
        send per segment with complete checksums (raw transport: no GSO for raw sockets)."""
        start = FRAME_PREFIX_LEN
        raw = port.transport == "raw"
        try:
            hdr = offload.parse_vnet_hdr(mv[start:])
            prefix = port.prefix[4:] if raw else port.prefix_partial
            data, stride, count = offload.segment(mv[start + VNET_HDR_LEN:end], hdr, prefix, full_csum=raw)
        except OffloadError:
            drops["gso_unsupported"] += 1
            return
        port.stats[7] += 1
        for addr in targets:
            if raw:
                self._send_each(port, data, stride, count, addr, drops)
            else:
                self._send_gso(port, data, stride, count, addr, drops)

    def _send_each(self, port: VnetPort, data: bytes, stride: int, count: int, addr: str,
                   drops: Counter[str]) -> None:
        assert self._raw is not None
        mv = memoryview(data)
        sent = 0
        for k in range(count):
            try:
                self._raw.sendto(mv[k * stride:(k + 1) * stride], (addr, 0))
                sent += 1
            except OSError as e:
                drops["send_emsgsize" if e.errno == errno.EMSGSIZE else "send_error"] += 1
        stats = port.stats
        stats[0] += sent
        stats[1] += len(data) - count * 2
        stats[5] += sent

    def _send(self, port: VnetPort, mv: memoryview, start: int, end: int, addr: str, drops: Counter[str]) -> None:
        try:
            if port.transport == "udp":
                self._udp.sendto(mv[start:end], (addr, self.port))
            else:
                assert self._raw is not None
                self._raw.sendto(mv[start + 4:end], (addr, 0))
        except OSError as e:
            drops["send_emsgsize" if e.errno == errno.EMSGSIZE else "send_error"] += 1
            return
        stats = port.stats
        stats[0] += 1
        stats[1] += end - start - FRAME_PREFIX_LEN
        stats[5] += 1

    def _send_gso(self, port: VnetPort, data: bytes, stride: int, count: int, addr: str,
                  drops: Counter[str]) -> None:
        """Equal-sized datagrams in as few sendmsg calls as UDP_SEGMENT allows."""
        per_call = max(1, min(MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD // stride))
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", stride))]
        mv = memoryview(data)
        sent = 0
        for first in range(0, count, per_call):
            chunk = mv[first * stride:(first + per_call) * stride]
            try:
                self._udp.sendmsg([chunk], cmsg if len(chunk) > stride else [], 0, (addr, self.port))
            except OSError as e:
                drops["send_emsgsize" if e.errno == errno.EMSGSIZE else "send_error"] += 1
                continue
            sent += min(per_call, count - first)
        stats = port.stats
        stats[0] += sent
        stats[1] += len(data) - count * FRAME_PREFIX_LEN
        stats[5] += sent

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
                # The Ethernet frame starts after our prefix and, on offload ports, the virtio header.
                eth = FRAME_PREFIX_LEN + (VNET_HDR_LEN if port.offload else 0)
                for _ in range(BATCH):
                    try:
                        n = os.readv(fd, [body])
                    except BlockingIOError:
                        break
                    except OSError:
                        drops["tap_read_error"] += 1
                        break
                    end = FRAME_PREFIX_LEN + n
                    if end - eth < 14:
                        drops["runt"] += 1
                        continue
                    if end - eth > port.max_frame and not (port.offload and buf[FRAME_PREFIX_LEN + 1]):
                        drops["oversize"] += 1
                        continue
                    if buf[eth] & 1:  # group bit: broadcast or multicast
                        port.stats[4] += 1
                        self._emit(port, mv, end, self.flood_targets(port), drops)
                        continue
                    key = (vnet, bytes(buf[eth:eth + 6]))
                    dest = fdb.get(key)
                    if dest is not None:
                        if key in stale:
                            self.control.on_stale(vnet, key[1])
                        self._emit(port, mv, end, (dest,), drops)
                    elif key in local_macs:
                        continue  # the bridge has not learned it yet; it already delivered locally
                    else:
                        self.control.on_miss(vnet, key[1], bytes(body[:n]))

    # --- receiving ----------------------------------------------------------------------------
    #
    # Datagrams land in one buffer at RX_OFF. A batch is a run of datagrams of equal size (the
    # last may be shorter) laid out back to back: either what the kernel's UDP GRO handed over in
    # one recvmsg, or what a userspace drain collected (MSG_DONTWAIT reads of what is already
    # queued: no waiting, so no added latency) when the underlay delivers datagrams one by one, as
    # it does without GRO and always for raw sockets. Batches go through `offload.coalesce`.

    def _udp_loop(self) -> None:
        buf = bytearray(RX_BUF_SIZE)
        mv = memoryview(buf)
        sock = self._udp
        drops = self.drops["udp"]
        cmsg_space = socket.CMSG_SPACE(4)

        def recv(off: int, flags: int) -> tuple[int, int, str]:
            n, anc, _flags, (src, _) = sock.recvmsg_into([mv[off:off + BUF_SIZE]], cmsg_space, flags)
            gso = n
            for level, kind, data in anc:
                if level == SOL_UDP and kind == UDP_GRO:
                    gso = struct.unpack("=i", data[:4])[0] or n
            return n, gso, src

        while not self._stopping:
            try:
                n, gso, src = recv(RX_OFF, 0)
            except OSError:
                if self._stopping:
                    return
                drops["recv_error"] += 1
                continue
            if n == 0 and self._stopping:
                return
            if gso < n:
                self._rx_batch(mv, RX_OFF, n, gso, src, FRAME_PREFIX_LEN, drops)
            else:
                self._rx_drain(mv, n, src, recv, FRAME_PREFIX_LEN, drops)

    def _rx_drain(self, mv: memoryview, n: int, src: str, recv: Callable[[int, int], tuple[int, int, str]],
                  prefix_len: int, drops: Counter[str], prefix_mask: bytes | None = None) -> None:
        """The datagram at RX_OFF (n bytes) plus whatever equal-sized ones are queued behind it."""
        stride, end, count = n, RX_OFF + n, 1
        while count < MAX_BATCH and end + BUF_SIZE <= len(mv) and stride >= MIN_BATCH_STRIDE:
            try:
                m, gso, src2 = recv(end, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                drops["recv_error"] += 1
                break
            if src2 != src or gso < m or m > stride:
                # Not part of this batch: finish the batch, then handle it on its own.
                self._rx_batch(mv, RX_OFF, end - RX_OFF, stride, src, prefix_len, drops, prefix_mask, count)
                if gso < m:
                    self._rx_batch(mv, end, m, gso, src2, prefix_len, drops, prefix_mask)
                else:
                    self._rx_one(mv, end, end + m, src2, drops, prefix_len)
                return
            end += m
            count += 1
            if m < stride:
                break  # a shorter datagram ends a batch
        if count == 1:
            self._rx_one(mv, RX_OFF, end, src, drops, prefix_len)
        else:
            self._rx_batch(mv, RX_OFF, end - RX_OFF, stride, src, prefix_len, drops, prefix_mask, count)

    def _rx_one(self, mv: memoryview, off: int, end: int, src: str, drops: Counter[str], prefix_len: int) -> None:
        if prefix_len == FRAME_PREFIX_LEN:
            self._rx_datagram(mv, off, end, src, drops)
        else:
            self._rx_raw(mv, off, end, src, drops)

    def _rx_datagram(self, mv: memoryview, off: int, end: int, src: str, drops: Counter[str]) -> None:
        """One UDP datagram at mv[off:end]; mv[off-10:off] may be overwritten (room for a virtio header)."""
        if end - off >= 2 and mv[off] == 0 and mv[off + 1] == 2:
            try:
                vnet, flags = peek_frame(mv[off:end], end - off)
            except WireError:
                drops["bad_frame"] += 1
                return
            self._deliver(vnet, mv, off + FRAME_PREFIX_LEN, end, src, drops, partial=bool(flags & FLAG_CSUM_PARTIAL))
        elif end - off >= 2 and mv[off] == 0 and mv[off + 1] == 1:
            self.varp_rx += 1
            self.control.on_varp(bytes(mv[off:end]), src)
        else:
            drops["bad_message"] += 1

    def _rx_raw(self, mv: memoryview, off: int, end: int, src: str, drops: Counter[str]) -> None:
        """One raw IPv4 packet at mv[off:end]: outer header, EtherIP header, frame."""
        ihl = (mv[off] & 0x0F) * 4
        if end - off < ihl + 2 + 14:
            drops["bad_frame"] += 1
            return
        word = (mv[off + ihl] << 8) | mv[off + ihl + 1]
        if word >> 12 != 3:
            drops["bad_frame"] += 1
            return
        self._deliver(word & 0x0FFF, mv, off + ihl + 2, end, src, drops)

    def _rx_batch(self, mv: memoryview, off: int, n: int, stride: int, src: str, prefix_len: int,
                  drops: Counter[str], prefix_mask: bytes | None = None, count: int = 0) -> None:
        """A batch at mv[off:off+n]: datagrams of `stride` bytes, the last possibly shorter."""
        count = count or -(-n // stride)
        batch = mv[off:off + n]
        port = self._batch_port(batch, stride, prefix_len)
        if port is None or not port.offload:
            for k in range(count):
                self._rx_one(mv, off + k * stride, min(off + (k + 1) * stride, off + n), src, drops, prefix_len)
            return
        stats = port.stats
        for first, length, mss in offload.coalesce(batch, stride, count, prefix_len, prefix_mask):
            if length == 1:  # anything that does not merge, also another VNET's datagram
                o = off + first * stride
                self._rx_one(mv, o, min(o + stride, off + n), src, drops, prefix_len)
                continue
            out = offload.merge(batch, stride, first, length, mss, prefix_len)
            self._learn(port.vnet, memoryview(out)[VNET_HDR_LEN:], src)
            try:
                os.write(port.fd, out)
            except OSError:
                drops["tap_write_error"] += 1
                continue
            stats[2] += length
            stats[3] += len(out) - VNET_HDR_LEN
            stats[6] += length
            stats[8] += 1

    def _batch_port(self, batch: memoryview, stride: int, prefix_len: int) -> VnetPort | None:
        """The VNET of the batch's first datagram, if it is a frame (coalesce keeps runs in it)."""
        if prefix_len == FRAME_PREFIX_LEN:
            if batch[0] != 0 or batch[1] != 2:
                return None
            try:
                vnet, _ = peek_frame(batch[:stride], min(stride, len(batch)))
            except WireError:
                return None
        else:
            word = (batch[prefix_len - 2] << 8) | batch[prefix_len - 1]
            if word >> 12 != 3:
                return None
            vnet = word & 0x0FFF
        return self.vnets.get(vnet)

    def _raw_loop(self) -> None:
        buf = bytearray(RX_BUF_SIZE)
        mv = memoryview(buf)
        assert self._raw is not None
        sock = self._raw
        drops = self.drops["raw"]

        def recv(off: int, flags: int) -> tuple[int, int, str]:
            n = sock.recv_into(mv[off:off + BUF_SIZE], 0, flags)
            return n, n, socket.inet_ntoa(mv[off + 12:off + 16]) if n >= 20 else ""

        while not self._stopping:
            try:
                n, _, src = recv(RX_OFF, 0)
            except OSError:
                if self._stopping:
                    return
                drops["recv_error"] += 1
                continue
            if n == 0:
                if self._stopping:
                    return
                continue
            if src == self.local_addr:
                continue
            # A raw socket hands over the outer IPv4 header too (dataplane.md pitfall 2); only
            # option-less headers batch, and the header's id and checksum may differ.
            if n >= 22 and mv[RX_OFF] == 0x45:
                self._rx_drain(mv, n, src, recv, RAW_PREFIX_LEN, drops, RAW_PREFIX_MASK)
            else:
                self._rx_raw(mv, RX_OFF, RX_OFF + n, src, drops)

    def _learn(self, vnet: int, frame: memoryview, src: str) -> None:
        if self.learn and not frame[6] & 1:
            key = (vnet, bytes(frame[6:12]))
            if self.fdb.get(key) == src:
                self.seen[key] = self.clock()
            elif key not in self.local_macs:
                self.control.on_learn(vnet, key[1], src)

    def _deliver(self, vnet: int, mv: memoryview, off: int, end: int, src: str, drops: Counter[str],
                 partial: bool = False, counted: bool = False) -> None:
        """Write the frame at mv[off:end] to the VNET's TAP; mv[off-10:off] is free for a virtio header."""
        port = self.vnets.get(vnet)
        if port is None:
            drops["not_member"] += 1
            return
        if end - off > port.max_frame:
            drops["oversize"] += 1
            return
        self._learn(vnet, mv[off:end], src)
        if port.offload:
            mv[off - VNET_HDR_LEN:off] = offload.needs_csum_hdr(mv[off:end], mv, off) if partial else NO_VNET_HDR
            off -= VNET_HDR_LEN
        elif partial:
            drops["partial_csum_to_plain_tap"] += 1  # a plain TAP cannot finish the checksum
            return
        try:
            os.write(port.fd, mv[off:end])
        except OSError:
            drops["tap_write_error"] += 1
            return
        stats = port.stats
        stats[2] += 1
        stats[3] += end - off - (VNET_HDR_LEN if port.offload else 0)
        if not counted:
            stats[6] += 1


def gso_max_size_for(mtu: int) -> int:
    """Largest TSO burst a guest should build so that all its segments fit one UDP_SEGMENT send
    (65,507 bytes of UDP payload): a 64 KiB burst would cost a second send and a second GRO batch."""
    stride = FRAME_PREFIX_LEN + mtu + 14
    return min(MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD // stride) * (mtu - 40)


def mtu_for(transport: str, underlay_mtu: int) -> int:
    """Largest inner MTU whose encapsulated packet fits the underlay (DESIGN.md, "MTU")."""
    overhead = 20 + 2 + 14 if transport == "raw" else 20 + 8 + FRAME_PREFIX_LEN + 14
    return underlay_mtu - overhead


