"""The data plane: frames between the VNET TAPs and the underlay, outside the asyncio loop.

Threads (reference/dataplane.md: process layout barely matters on 2 cores, the GIL costs ~8%):
  tap  - epoll over every TAP; drains up to 64 frames per wake-up into one preallocated buffer with
         the 6-byte UDP prefix reserved in front, then one sendto per frame (no copies).
  udp  - blocking recvfrom_into on UDP/1798: frames to their TAP, VARP to the control plane.
  raw  - the same for IPv4 protocol 97 (opened only when a VNET uses the raw transport; every raw
         socket gets a copy of every proto-97 packet in the namespace, so there is exactly one).
  esp  - ESP in UDP on port 4500 (opened with the first secured VNET).
Every loop survives whatever one input makes it raise (dropped, counted as `error_<class>`,
logged at a limited rate), and a supervisor (`supervisor.py`, its own thread) restarts a worker
that dies anyway, with backoff; `health()` says which run.

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
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

from gatekeeper.vnet import offload
from gatekeeper.vnet.esp_sa import EspDrop, SecurityAssociations
from gatekeeper.vnet.esp_sendbatch import SendBatch
from gatekeeper.vnet.offload import VNET_HDR_LEN, OffloadError
from gatekeeper.vnet.port import (
    BATCH,
    BUF_SIZE,
    IP_MTU_DISCOVER,
    IP_PMTUDISC_DO,
    MAX_GSO_SEGMENTS,
    MAX_UDP_PAYLOAD,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    ControlPlane,
    VnetPort,
)
from gatekeeper.vnet.receive import Receiver
from gatekeeper.vnet.supervisor import Health, RateLimitedLog, Supervisor
from softudc.wire import ETHERIP_PROTO, VNET_PORT
from softudc.wire.esp import ESP_PORT
from softudc.wire.udpframe import FRAME_PREFIX_LEN

log = logging.getLogger("gatekeeper.vnet.forwarder")
ControlRequest = tuple[str, VnetPort, threading.Event, list[Exception]]
Emit = Callable[[VnetPort, memoryview, int, tuple[str, ...], Counter[str]], None]


class Forwarder(Receiver):
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
        esp_port: int = ESP_PORT,
    ) -> None:
        self.local_addr = local_addr
        self.group = group
        self.flood_mode = flood
        self.fdb, self.stale, self.seen, self.local_macs = fdb, stale, seen, local_macs
        self.control = control
        self.learn = learn
        self.clock = clock
        self.port = port
        self.esp_port = esp_port
        self.vnets: dict[int, VnetPort] = {}
        self.drops: dict[str, Counter[str]] = {"tap": Counter(), "udp": Counter(), "raw": Counter(),
                                               "esp": Counter(), "ctl": Counter()}
        self.varp_rx = 0
        self.rx_fixed: Counter[str] = Counter()  # frames the receive path finished (unflagged.py)
        self._stopping = False
        # Restarts any worker thread that ends anyway; its health goes into the host report.
        self.supervisor = Supervisor(clock=time.monotonic)
        self._errlog = RateLimitedLog(log)
        self._udp = self._open_udp()
        self._raw: socket.socket | None = None
        self._esp: socket.socket | None = None
        self.sas = SecurityAssociations(local_addr)
        self._ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._ctl: queue.Queue[ControlRequest] = queue.Queue()

    # --- sockets ------------------------------------------------------------------------------

    def _open_udp(self, port: int | None = None) -> socket.socket:
        port = self.port if port is None else port
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"cannot bind UDP port {port}: {e.strerror} "
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

    def _ensure_esp(self) -> None:
        """ESP in UDP (RFC 3948) on its own port, opened with the first secured VNET."""
        if self._esp is not None:
            return
        self._esp = self._open_udp(self.esp_port)
        self._spawn("esp", self._esp_loop)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.supervisor.start()
        self._spawn("tap", self._tap_loop)
        self._spawn("udp", self._udp_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        self.supervisor.add(f"fwd-{name}", target)

    def health(self) -> Health:
        """Each worker thread's state and the restarts so far (`Supervisor.health`)."""
        return self.supervisor.health()

    def stop(self) -> None:
        self._stopping = True
        self.supervisor.halt()  # before the loops return: their ending is no death to restart
        os.write(self._wake_w, b"x")
        for s in (self._udp, self._raw, self._esp):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        self.supervisor.stop(timeout=2)
        for s in (self._udp, self._raw, self._esp):
            if s is not None:
                s.close()

    def add_vnet(self, port: VnetPort) -> None:
        if port.secure:
            self._ensure_esp()
        elif port.transport == "raw":
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
        errors: list[Exception] = []
        self._ctl.put((op, port, done, errors))
        os.write(self._wake_w, b"x")
        if not done.wait(5):
            health = self.health()["workers"]
            raise RuntimeError(f"forwarder did not apply {op} of vnet {port.vnet} within 5 s (workers: {health}); "
                               "see the gatekeeper's log for why")
        if errors:
            raise RuntimeError(f"forwarder could not {op} vnet {port.vnet}: {errors[0]}") from errors[0]

    def _apply_control(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                op, port, done, errors = self._ctl.get_nowait()
            except queue.Empty:
                return
            try:
                if op == "add":
                    self._ep.register(port.fd, select.EPOLLIN)
                    self.vnets[port.vnet] = port
                else:
                    self.vnets.pop(port.vnet, None)
                    with contextlib.suppress(OSError, ValueError):
                        self._ep.unregister(port.fd)
            except Exception as e:  # the caller raises it; the TAP thread carries on
                errors.append(e)
            finally:
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
        if port.secure:
            self._emit_esp(port, mv, end, targets, drops)
            return
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

    def _emit_esp(self, port: VnetPort, mv: memoryview, end: int, targets: tuple[str, ...],
                  drops: Counter[str], batch: SendBatch | None = None) -> None:
        """Secured VNET: every frame is sealed into its own ESP packet (EtherIP header + frame,
        complete checksums: nothing inside ESP can say "partial"). A super-frame is cut and
        sealed into one buffer of equal-sized packets (`seal_super_frame`: in one C call where
        the native engine is built), which leaves in one UDP_SEGMENT send; a single packet may
        wait in the TAP drain's `batch` instead (`_esp_out`)."""
        start = FRAME_PREFIX_LEN
        etherip = port.prefix[4:]
        try:
            if port.offload and mv[start + 1]:
                hdr = offload.parse_vnet_hdr(mv[start:])
                packets, size, used, count = self.sas.seal_super_frame(port.vnet, mv[start + VNET_HDR_LEN:end], hdr,
                                                                       etherip)
                data = packets.reshape(-1).data[:used]
                port.stats[7] += 1
            else:
                csum = None
                if port.offload:
                    flags = mv[start]
                    csum_start = mv[start + 6] | mv[start + 7] << 8
                    csum_offset = mv[start + 8] | mv[start + 9] << 8
                    start += VNET_HDR_LEN
                    if flags & 1:
                        if start + csum_start + csum_offset + 2 > end:
                            drops["bad_csum_offsets"] += 1
                            return
                        csum = (csum_start + 2, csum_offset)  # completed by the seal, behind the EtherIP header
                mv[start - 2:start] = etherip
                data = memoryview(self.sas.seal(port.vnet, mv[start - 2:end], csum))
                size, used, count = len(data), len(data), 1
        except OffloadError:
            drops["gso_unsupported"] += 1
            return
        except EspDrop as e:
            drops[e.reason] += 1
            return
        self._esp_out(port, data, size, used, count, targets, drops, batch)

    def _esp_out(self, port: VnetPort, data: memoryview, size: int, used: int, count: int, targets: tuple[str, ...],
                 drops: Counter[str], batch: SendBatch | None) -> None:
        """Sealed packets (`count` of `size` bytes, `used` in all) to every target. A single packet
        to one address joins `batch` (the TAP drain's, `esp_sendbatch`) instead; whatever else
        leaves flushes the batch first, so the order stays."""
        if batch is not None:
            if count == 1 and len(targets) == 1:
                if not batch.fits(port, targets[0], used):
                    batch.flush(drops)
                batch.add(port, targets[0], data)
                return
            batch.flush(drops)
        for addr in targets:
            sent = self._esp_send(data, size, count, addr, drops)
            port.count_sent(sent, used)

    def _esp_send(self, data: memoryview, size: int, count: int, addr: str, drops: Counter[str]) -> int:
        assert self._esp is not None
        return self._send_segments(self._esp, self.esp_port, data, size, count, addr, drops)

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
        port.count_sent(sent, len(data) - count * 2)

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
        port.count_sent(1, end - start - FRAME_PREFIX_LEN)

    def _send_gso(self, port: VnetPort, data: bytes, stride: int, count: int, addr: str,
                  drops: Counter[str]) -> None:
        sent = self._send_segments(self._udp, self.port, memoryview(data), stride, count, addr, drops)
        port.count_sent(sent, len(data) - count * FRAME_PREFIX_LEN)

    @staticmethod
    def _send_segments(sock: socket.socket, dport: int, data: memoryview, stride: int, count: int, addr: str,
                       drops: Counter[str]) -> int:
        """Equal-sized datagrams (the last may be shorter) in as few sendmsg calls as
        UDP_SEGMENT allows; returns how many left."""
        per_call = max(1, min(MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD // stride))
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", stride))]
        sent = 0
        for first in range(0, count, per_call):
            chunk = data[first * stride:(first + per_call) * stride]
            try:
                sock.sendmsg([chunk], cmsg if len(chunk) > stride else [], 0, (addr, dport))
            except OSError as e:
                drops["send_emsgsize" if e.errno == errno.EMSGSIZE else "send_error"] += 1
                continue
            sent += min(per_call, count - first)
        return sent

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
        batch = SendBatch(self._esp_send)  # sealed single frames of one drain (secured VNETs)
        # From the VNETs already registered: after a restart by the supervisor, their TAPs are
        # served at once, not only after the next registration change.
        ports_by_fd: dict[int, VnetPort] = {p.fd: p for p in self.vnets.values()}
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
                self._drain_tap(port, buf, mv, body, drops, batch if port.secure else None)
                batch.flush(drops)  # at the end of every drain: the TAP is empty, nothing waits longer

    def _drain_tap(self, port: VnetPort, buf: bytearray, mv: memoryview, body: memoryview,
                   drops: Counter[str], batch: SendBatch | None = None) -> None:
        """Up to BATCH frames from a readable TAP, each flooded, sent to where the FDB says, or
        handed to the control side (one call per readiness event, none more per frame). ESP
        packets of single frames wait in `batch` (`esp_sendbatch`), flushed by the caller."""
        fd, vnet, fdb, stale = port.fd, port.vnet, self.fdb, self.stale
        emit, flush = self._emitters(batch, drops)
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
            # One frame's failure is that frame's drop (audit R4: an IndexError from a
            # malformed GSO frame used to end this thread and all sending on the host).
            try:
                if buf[eth] & 1:  # group bit: broadcast or multicast
                    port.stats[4] += 1
                    emit(port, mv, end, self.flood_targets(port), drops)
                    continue
                key = (vnet, bytes(buf[eth:eth + 6]))
                dest = fdb.get(key)
                if dest is None or key in stale:  # the same two tests as the fast path made before
                    flush()  # what waits in the batch leaves first
                    self._unicast_slow(port, key, dest, mv, end, body, n, drops)
                    continue
                emit(port, mv, end, (dest,), drops)
            except Exception as e:
                self._count_error("tap", drops, e)

    def _emitters(self, batch: SendBatch | None, drops: Counter[str]) -> tuple[Emit, Callable[[], None]]:
        """(emit, flush) for one drain: `_emit` as is, or with a secured port's ESP batch."""
        if batch is None:
            return self._emit, lambda: None

        def emit(port: VnetPort, mv: memoryview, end: int, targets: tuple[str, ...], d: Counter[str]) -> None:
            self._emit_esp(port, mv, end, targets, d, batch)

        return emit, lambda: batch.flush(drops)

    def _unicast_slow(self, port: VnetPort, key: tuple[int, bytes], dest: str | None, mv: memoryview, end: int,
                      body: memoryview, n: int, drops: Counter[str]) -> None:
        """A unicast frame off the fast path: to a STALE entry (sent, and the entry re-confirmed),
        to a local MAC the bridge has not learned yet (it already delivered it), or a miss."""
        if dest is not None:
            self.control.on_stale(port.vnet, key[1])
            self._emit(port, mv, end, (dest,), drops)
        elif key not in self.local_macs:
            self.control.on_miss(port.vnet, key[1], bytes(body[:n]))
