"""vnetd: a thin asyncio shell around `core.RelayCore`.

Sockets, all in the segment's network namespace:
  capture - raw IPv4/UDP: every UDP packet delivered here, with its IP header; we keep those sent
            to the VARP group on the relayed ports (the host joins the group for this).
  relay   - UDP on our address, port 1798: authenticated relay messages (id 3) to and from peers.
  inject  - raw IPPROTO_RAW (header included): re-sends a relayed packet onto our segment as it
            was, original source address included, so replies go straight back to its sender.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from softudc import localapi
from softudc.daemonmain import daemon_main
from softudc.wire import WireError
from softudc.wire.ipv4 import with_udp_checksum
from softudc.wire.relay import RelayAuthError, RelayMessage, RelayOp, build_relay, parse_relay
from vnetd.config import VnetdConfig, load_config
from vnetd.core import Command, Hello, Inject, Relay, RelayCore

log = logging.getLogger("vnetd")
RELAY_PORT = 1798
TICK = 0.2
ERROR_LOG_EVERY_S = 10.0  # a receive loop's unexpected errors are logged at most this often


class Vnetd:
    def __init__(self, config: VnetdConfig) -> None:
        self.config = config
        # Sequence numbers start at the wall clock in ns: a restarted vnetd never reuses a name
        # its peers still remember as seen.
        self.core = RelayCore(config.address, hello_interval=config.hello_interval, seq=time.time_ns(),
                              group=config.group, ports=config.ports)
        for p in config.peers:
            self.core.add_peer(p)
        self.counts: dict[str, int] = {}
        self.started = time.time()
        ifindex = socket.if_nametoindex(config.interface)
        mreqn = socket.inet_aton(config.group) + socket.inet_aton(config.address) + struct.pack("@i", ifindex)
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind((config.address, RELAY_PORT))
        self.relay.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)  # makes the host join
        self.relay.setblocking(False)
        self.capture = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self.capture.setblocking(False)
        self.inject = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.inject.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        self.inject.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        self._group = socket.inet_aton(config.group)
        self._me = socket.inet_aton(config.address)
        self._error_logged = 0.0
        self.wall_ns: Callable[[], int] = time.time_ns  # injectable, as is the monotonic clock
        self.monotonic: Callable[[], float] = time.monotonic

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def _survive(self, where: str, e: Exception) -> None:
        """One input must never end a receive loop: count the error by kind, log it now and then."""
        self._count(f"error_{type(e).__name__}")
        now = time.monotonic()
        if now - self._error_logged >= ERROR_LOG_EVERY_S:
            self._error_logged = now
            log.warning("%s: dropped one input after %s: %s (counted; logged at most every %.0f s)",
                        where, type(e).__name__, e, ERROR_LOG_EVERY_S)

    def on_capture(self) -> None:
        while True:
            try:
                packet = self.capture.recv(65535)
            except BlockingIOError:
                return
            try:
                self._captured(packet)
            except Exception as e:
                self._survive("capture", e)

    def _captured(self, packet: bytes) -> None:
        """One packet from the capture socket: relayed when it is UDP to the group on a relayed
        port, sent by someone else on our segment."""
        if len(packet) < 28 or packet[16:20] != self._group or packet[12:16] == self._me:
            return
        ihl = (packet[0] & 0x0F) * 4
        dport = int.from_bytes(packet[ihl + 2:ihl + 4], "big") if len(packet) >= ihl + 8 else 0
        if dport not in self.config.ports:
            return
        try:
            # Captured next to the sender, the checksum may still be the partial one of an
            # offloading NIC; relay the packet as it will be valid on the far side.
            packet = with_udp_checksum(packet)
        except WireError:
            self._count("malformed_capture")
            return
        self.run(self.core.local(packet, self.monotonic()))

    def on_relay(self) -> None:
        while True:
            try:
                data, (src, _) = self.relay.recvfrom(65535)
            except BlockingIOError:
                return
            try:
                self.received(data, src)
            except Exception as e:
                self._survive("relay", e)

    def received(self, data: bytes, src: str) -> None:
        """One datagram on the relay socket: authenticated, fresh, new, then acted on."""
        try:
            msg = parse_relay(data, self.config.key)
        except RelayAuthError:
            self._count("auth_failed")
            return
        except WireError:
            self._count("malformed")
            return
        if msg.key_id != self.config.key_id:
            self._count("unknown_key")
            return
        now, wall = self.monotonic(), self.wall_ns()
        if msg.op is RelayOp.HELLO:
            if not self.core.fresh(msg.timestamp_ns, wall):
                self._count("stale")
                return
            self.core.hello(src, now)
        else:
            self.run(self.core.relayed(src, str(msg.origin), msg.seq, msg.hops, msg.packet, now,
                                       sent_ns=msg.timestamp_ns, wall_ns=wall))

    def run(self, commands: list[Command]) -> None:
        for cmd in commands:
            try:
                if isinstance(cmd, Inject):  # the core checked: UDP to the group on a relayed port
                    self.inject.sendto(cmd.packet, (self.config.group, 0))
                    self._count("injected_sent")
                elif isinstance(cmd, Relay):
                    msg = RelayMessage(RelayOp.PACKET, ipaddress.IPv4Address(cmd.origin), cmd.seq, cmd.hops,
                                       self.config.key_id, self.wall_ns(), cmd.packet)
                    self.relay.sendto(build_relay(msg, self.config.key), (cmd.peer, RELAY_PORT))
                elif isinstance(cmd, Hello):
                    msg = RelayMessage(RelayOp.HELLO, ipaddress.IPv4Address(self.config.address), 0, 0,
                                       self.config.key_id, self.wall_ns())
                    self.relay.sendto(build_relay(msg, self.config.key), (cmd.peer, RELAY_PORT))
            except OSError:
                self._count("send_error")  # a peer that is gone; HELLOs tell when it is back

    # --- API ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"name": self.config.name, "address": self.config.address, "group": self.config.group,
                "uptime": round(time.time() - self.started, 1), "peers": self.peers(),
                "counts": {**self.core.counts, **self.counts}}

    def peers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"address": p.address, "up": p.up, "tx": p.tx, "rx": p.rx,
                 "last_seen_s": None if p.last_seen is None else round(now - p.last_seen, 1)}
                for p in self.core.peers.values()]

    def peer_add(self, address: str) -> dict[str, Any]:
        ipaddress.IPv4Address(address)
        self.core.add_peer(address)
        return {"added": address}

    def peer_del(self, address: str) -> dict[str, Any]:
        if address not in self.core.peers:
            raise ValueError(f"{address} is not a peer (see `peers`)")
        self.core.remove_peer(address)
        return {"removed": address}


class VnetdCollector(Collector):
    def __init__(self, d: Vnetd) -> None:
        self.d = d

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        name = self.d.config.name
        events = CounterMetricFamily("softudc_vnetd_events", "Relay events by kind", labels=["vnetd", "kind"])
        for kind, n in {**self.d.core.counts, **self.d.counts}.items():
            events.add_metric([name, kind], n)
        yield events
        up = GaugeMetricFamily("softudc_vnetd_peer_up", "1 if the peer answered recently", labels=["vnetd", "peer"])
        msgs = CounterMetricFamily("softudc_vnetd_peer_messages", "Messages per peer and direction",
                                   labels=["vnetd", "peer", "direction"])
        for p in list(self.d.core.peers.values()):
            up.add_metric([name, p.address], 1.0 if p.up else 0.0)
            msgs.add_metric([name, p.address, "tx"], p.tx)
            msgs.add_metric([name, p.address, "rx"], p.rx)
        yield up
        yield msgs


async def run(config_path: str) -> None:
    config = load_config(config_path)
    d = Vnetd(config)
    loop = asyncio.get_running_loop()
    loop.add_reader(d.capture.fileno(), d.on_capture)
    loop.add_reader(d.relay.fileno(), d.on_relay)
    if config.metrics_listen:
        registry = CollectorRegistry()
        registry.register(VnetdCollector(d))
        addr, port = config.metrics_listen.rsplit(":", 1)
        start_http_server(int(port), addr=addr, registry=registry)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def ticker() -> None:
        while True:
            d.run(d.core.tick(time.monotonic()))
            await asyncio.sleep(TICK)

    ops: dict[str, Callable[..., Any]] = {"status": d.status, "peers": d.peers, "peer.add": d.peer_add,
                                          "peer.del": d.peer_del}
    log.info("vnetd %s up on %s, peers %s", config.name, config.address, ", ".join(config.peers) or "none")
    async with asyncio.TaskGroup() as tg:
        api = tg.create_task(localapi.serve(config.api_socket, ops, (ValueError,)), name="api")
        tick = tg.create_task(ticker(), name="hello-timer")
        await stop.wait()
        api.cancel()
        tick.cancel()


def main(argv: list[str] | None = None) -> None:
    daemon_main("vnetd", "SoftUDC wide-area VNET relay", run, argv)
