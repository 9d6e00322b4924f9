"""The VNET control plane of one host: VNETs, attached ports, VARP. Called by the local API and
by the forwarding threads (misses, learning, VARP messages); all cache access under one lock."""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatekeeper.config import GatekeeperConfig
from gatekeeper.vnet.devices import Devices, bridge_name, open_tap, tap_name
from gatekeeper.vnet.forwarder import Forwarder, VnetPort, gso_max_size_for, mtu_for
from gatekeeper.vnet.varp_cache import Command, Dropped, SendRequest, Transmit, VarpCache
from softudc.wire import VarpMessage, VarpOp, WireError, build_varp, parse_varp
from softudc.wire.etherip import MAX_VNET_ID


class ServiceError(RuntimeError):
    """A request the service refuses; the message says what to do instead."""


def parse_mac(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ServiceError(f"mac: {text!r} is not a MAC address like 52:54:00:12:34:56")
    if raw[0] & 1:
        raise ServiceError(f"mac: {text} is a group address; an endpoint needs a unicast MAC")
    return raw


class VnetService:
    def __init__(self, config: GatekeeperConfig, devices: Devices, clock: Callable[[], float],
                 state_file: Path | None = None) -> None:
        self.config = config
        self.devices = devices
        self.lock = threading.RLock()
        self.cache = VarpCache(clock, config.varp_timers)
        self.local_macs: set[tuple[int, bytes]] = set()
        self.ports: dict[str, tuple[int, bytes]] = {}  # ifname -> (vnet, mac)
        self.varp_counts: Counter[str] = Counter()
        self.state_file = state_file
        self.forwarder = Forwarder(
            local_addr=config.underlay_address, group=config.varp_group, flood=config.flood,
            fdb=self.cache.fdb, stale=self.cache.stale, seen=self.cache.seen,
            local_macs=self.local_macs, control=self, learn=config.learn, clock=clock,
        )
        self._my_addr = ipaddress.IPv4Address(config.underlay_address)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.forwarder.start()
        self._restore()

    def stop(self) -> None:
        self.forwarder.stop()
        for port in list(self.forwarder.vnets.values()):
            os.close(port.fd)

    # --- API operations -----------------------------------------------------------------------

    def create_vnet(self, vnet: int, transport: str | None = None, members: list[str] | None = None) -> dict[str, Any]:
        if not isinstance(vnet, int) or not 1 <= vnet <= MAX_VNET_ID:
            raise ServiceError(f"vnet: {vnet!r} is not a VNET id in 1..{MAX_VNET_ID}")
        transport = transport or self.config.transport
        if transport not in ("udp", "raw"):
            raise ServiceError(f"transport: {transport!r}, expected 'udp' or 'raw'")
        member_hosts = tuple(members) if members is not None else self.config.member_hosts
        for m in member_hosts:
            try:
                ipaddress.IPv4Address(m)
            except ValueError:
                raise ServiceError(f"members: {m!r} is not an IPv4 address") from None
        with self.lock:
            existing = self.forwarder.vnets.get(vnet)
            if existing is not None:
                if existing.transport != transport:
                    raise ServiceError(f"vnet {vnet} exists with transport {existing.transport}; "
                                       "delete it first to change the transport")
                existing.members = tuple(m for m in member_hosts if m != self.config.underlay_address)
                self._save()
                return self._describe(existing)
            mtu = mtu_for(transport, self.config.underlay_mtu)
            self.devices.ensure_bridge(bridge_name(vnet), mtu)
            offload = self.config.offload
            fd = open_tap(tap_name(vnet), offload=offload)
            try:
                self.devices.enslave(tap_name(vnet), bridge_name(vnet), mtu)
                port = VnetPort(vnet, fd, transport, mtu,
                                tuple(m for m in member_hosts if m != self.config.underlay_address), offload)
                self.forwarder.add_vnet(port)
            except Exception:
                os.close(fd)
                raise
            self._save()
            return self._describe(port)

    def delete_vnet(self, vnet: int) -> dict[str, Any]:
        with self.lock:
            port = self.forwarder.remove_vnet(vnet)
            if port is None:
                raise ServiceError(f"vnet {vnet} does not exist on this host (see `vnet.list`)")
            os.close(port.fd)
            for ifname, (v, mac) in list(self.ports.items()):
                if v == vnet:
                    del self.ports[ifname]
                    self.local_macs.discard((v, mac))
            self.cache.forget_vnet(vnet)
            self.devices.delete(bridge_name(vnet))
            self._save()
            return {"vnet": vnet, "deleted": True}

    def list_vnets(self) -> list[dict[str, Any]]:
        return [self._describe(p) for p in sorted(self.forwarder.vnets.values(), key=lambda p: p.vnet)]

    def _describe(self, port: VnetPort) -> dict[str, Any]:
        return {
            "vnet": port.vnet, "bridge": bridge_name(port.vnet), "tap": tap_name(port.vnet),
            "transport": port.transport, "offload": port.offload, "mtu": port.mtu, "members": list(port.members),
            "ports": sorted(i for i, (v, _) in self.ports.items() if v == port.vnet),
            "tx_frames": port.stats[0], "tx_bytes": port.stats[1], "rx_frames": port.stats[2],
            "rx_bytes": port.stats[3], "flooded": port.stats[4], "tx_datagrams": port.stats[5],
            "rx_datagrams": port.stats[6], "tx_superframes": port.stats[7], "rx_superframes": port.stats[8],
        }

    def attach(self, vnet: int, ifname: str, mac: str) -> dict[str, Any]:
        raw_mac = parse_mac(mac)
        with self.lock:
            port = self.forwarder.vnets.get(vnet)
            if port is None:
                raise ServiceError(f"vnet {vnet} does not exist on this host; create it with vnet.create")
            previous = self.ports.get(ifname)
            if previous and previous[0] != vnet:
                raise ServiceError(f"{ifname} is attached to vnet {previous[0]}; detach it first")
            self.devices.enslave(ifname, bridge_name(vnet), port.mtu)
            self.ports[ifname] = (vnet, raw_mac)
            self.local_macs.add((vnet, raw_mac))
            self._run(self.cache.forget(vnet, raw_mac))
            # The bridge may still believe the MAC sits behind the TAP (it used to be remote).
            self.devices.forget_fdb(bridge_name(vnet), raw_mac.hex(":"))
            self._save()
        self.announce(vnet, raw_mac.hex(":"))
        result: dict[str, Any] = {"vnet": vnet, "ifname": ifname, "mac": raw_mac.hex(":"), "mtu": port.mtu}
        if port.offload and port.transport == "udp":
            # Like the MTU, a hint for the guest: TSO bursts that fit one GSO send.
            result["gso_max_size"] = gso_max_size_for(port.mtu)
        return result

    def detach(self, ifname: str) -> dict[str, Any]:
        with self.lock:
            entry = self.ports.pop(ifname, None)
            if entry is None:
                raise ServiceError(f"{ifname} is not attached to any VNET on this host")
            self.local_macs.discard(entry)
            self.devices.release(ifname)
            self._save()
        return {"ifname": ifname, "vnet": entry[0], "detached": True}

    def announce(self, vnet: int, mac: str) -> dict[str, Any]:
        """Gratuitous ANNOUNCE: tell every host that (vnet, mac) is here now."""
        raw_mac = parse_mac(mac)
        port = self.forwarder.vnets.get(vnet)
        if port is None:
            raise ServiceError(f"vnet {vnet} does not exist on this host")
        msg = build_varp(VarpMessage(VarpOp.ANNOUNCE, vnet, raw_mac, self._my_addr))
        for addr in self.forwarder.flood_targets(port):
            self.forwarder.send_varp(msg, addr)
        self.varp_counts["announce_tx"] += 1
        return {"vnet": vnet, "mac": raw_mac.hex(":"), "announced": True}

    def varp_entries(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.cache.entries()

    def varp_flush(self) -> dict[str, Any]:
        with self.lock:
            self._run(self.cache.flush())
        return {"flushed": True}

    def counters(self) -> dict[str, Any]:
        drops: Counter[str] = Counter()
        for c in self.forwarder.drops.values():
            drops.update(c)
        return {"drops": dict(drops), "varp": dict(self.varp_counts), "varp_rx": self.forwarder.varp_rx,
                "vnets": {p.vnet: self._describe(p) for p in self.forwarder.vnets.values()}}

    def tick(self) -> None:
        with self.lock:
            self._run(self.cache.tick())

    # --- called by the forwarding threads -----------------------------------------------------

    def on_miss(self, vnet: int, mac: bytes, frame: bytes) -> None:
        with self.lock:
            self._run(self.cache.miss(vnet, mac, frame))

    def on_stale(self, vnet: int, mac: bytes) -> None:
        with self.lock:
            self._run(self.cache.use_stale(vnet, mac))

    def on_learn(self, vnet: int, mac: bytes, addr: str) -> None:
        with self.lock:
            self.varp_counts["learned"] += 1
            self._run(self.cache.learn(vnet, mac, addr))

    def on_varp(self, buf: bytes, src: str) -> None:
        try:
            msg = parse_varp(buf)
        except WireError:
            self.varp_counts["bad"] += 1
            return
        if msg.vnet not in self.forwarder.vnets:
            self.varp_counts["not_member"] += 1
            return
        key = (msg.vnet, msg.vmac)
        if msg.op is VarpOp.REQUEST:
            self.varp_counts["request_rx"] += 1
            if key in self.local_macs:
                reply = build_varp(VarpMessage(VarpOp.ANNOUNCE, msg.vnet, msg.vmac, self._my_addr))
                self.forwarder.send_varp(reply, src)
                self.varp_counts["reply_tx"] += 1
            return
        self.varp_counts["announce_rx"] += 1
        if key in self.local_macs or not isinstance(msg.addr, ipaddress.IPv4Address):
            self.varp_counts["announce_ignored"] += 1
            return
        with self.lock:
            self._run(self.cache.announce(msg.vnet, msg.vmac, str(msg.addr)))

    # --- helpers ------------------------------------------------------------------------------

    def _run(self, commands: list[Command]) -> None:
        """Carry out what the cache decided. Called with the lock held."""
        drops = self.forwarder.drops["ctl"]
        for cmd in commands:
            if isinstance(cmd, SendRequest):
                port = self.forwarder.vnets.get(cmd.vnet)
                if port is None:
                    continue
                msg = build_varp(VarpMessage(VarpOp.REQUEST, cmd.vnet, cmd.mac, self._my_addr))
                for addr in self.forwarder.flood_targets(port):
                    self.forwarder.send_varp(msg, addr)
                self.varp_counts["request_tx"] += 1
            elif isinstance(cmd, Transmit):
                port = self.forwarder.vnets.get(cmd.vnet)
                if port is None:
                    continue
                for frame in cmd.frames:
                    self.forwarder.send_frame(port, frame, cmd.addr, drops)
            elif isinstance(cmd, Dropped):
                drops[f"varp_{cmd.reason}"] += cmd.count

    def _save(self) -> None:
        if self.state_file is None:
            return
        state = {
            "vnets": [{"vnet": p.vnet, "transport": p.transport, "members": list(p.members)}
                      for p in self.forwarder.vnets.values()],
            "ports": [{"ifname": i, "vnet": v, "mac": m.hex(":")} for i, (v, m) in self.ports.items()],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    def _restore(self) -> None:
        """After a restart: recreate the VNETs and re-attach ports that still exist."""
        if self.state_file is None or not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        for v in state.get("vnets", []):
            self.create_vnet(v["vnet"], v["transport"], v["members"])
        for p in state.get("ports", []):
            if self.devices.index(p["ifname"]) is not None:
                self.attach(p["vnet"], p["ifname"], p["mac"])
