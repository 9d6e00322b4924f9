"""The VNET control plane of one host: VNETs, attached ports, VARP. Called by the local API and
by the forwarding threads (misses, learning, VARP messages); all cache access under one lock."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatekeeper.config import GatekeeperConfig, load_keys, parse_vnet_keys
from gatekeeper.vnet.bpf import handover
from gatekeeper.vnet.bpf.fastpath import FastPath
from gatekeeper.vnet.devices import Devices, bridge_name, open_tap, tap_name
from gatekeeper.vnet.forwarder import Forwarder
from gatekeeper.vnet.port import VnetPort, gso_max_size_for, mtu_for
from gatekeeper.vnet.requests import ServiceError as ServiceError  # re-exported: callers import it from here
from gatekeeper.vnet.requests import parse_mac as parse_mac
from gatekeeper.vnet.supervisor import reason_of
from gatekeeper.vnet.varp_auth import VarpAuth
from gatekeeper.vnet.varp_cache import Command, Dropped, SendRequest, Transmit, VarpCache
from softudc.atomicfile import move_aside, write_atomic
from softudc.security.keys import VnetKeys
from softudc.security.seqstore import SequenceStore
from softudc.wire import VarpOp, WireError, parse_varp
from softudc.wire.etherip import MAX_VNET_ID

log = logging.getLogger("gatekeeper.vnet")


class VnetService:
    def __init__(self, config: GatekeeperConfig, devices: Devices, clock: Callable[[], float],
                 state_file: Path | None = None, wall_clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self.devices = devices
        self.lock = threading.RLock()
        self.cache = VarpCache(clock, config.varp_timers)
        self.local_macs: set[tuple[int, bytes]] = set()
        self.departing: set[tuple[int, bytes]] = set()  # local MACs of VMs migrating away
        self.ports: dict[str, tuple[int, bytes]] = {}  # ifname -> (vnet, mac)
        self.varp_counts: Counter[str] = Counter()
        self.state_file = state_file
        self.fastpath = FastPath(config, state_file)  # the eBPF data path (docs/ebpf.md)
        self.forwarder = Forwarder(
            local_addr=config.underlay_address, group=config.varp_group, flood=config.flood,
            fdb=self.cache.fdb, stale=self.cache.stale, seen=self.cache.seen,
            local_macs=self.local_macs, control=self, learn=config.learn, clock=clock,
        )
        # Outbound ESP sequence numbers are reserved on disk next to the state before use, so a
        # restarted gatekeeper never reuses a (key, nonce) pair (audit R1).
        self.forwarder.sas.seq_store = SequenceStore(state_file.with_name("gatekeeper-esp-seq.json")
                                                     if state_file is not None else None)
        # Keys from the keys file: used when a VNET is created without keys of its own.
        self.keyring: dict[int, VnetKeys] = load_keys(config.keys_file) if config.keys_file else {}
        self.varp_auth = VarpAuth(lambda vnet: self.forwarder.sas.keys(vnet),
                                  ipaddress.IPv4Address(config.underlay_address), wall_clock_ns,
                                  config.varp_auth_window)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.forwarder.start()
        self._restore()
        with self.lock:
            self.fastpath.adopted(self.cache)  # after a restart in place: the pinned FDB (handover.py)

    def stop(self, keep_datapath: bool = False) -> dict[str, int]:
        """`keep_datapath`: a restart in place; the eBPF VNETs' TAPs (returned) stay open for the successor."""
        self.forwarder.stop()
        kept = self.fastpath.stop(keep=keep_datapath)
        for port in [p for p in self.forwarder.vnets.values() if p.fd not in kept.values()]:
            os.close(port.fd)
        return kept

    # --- API operations -----------------------------------------------------------------------

    def create_vnet(self, vnet: int, transport: str | None = None, members: list[str] | None = None,
                    security: str | None = None, keys: dict[str, Any] | None = None,
                    mtu: int | None = None) -> dict[str, Any]:
        """Create (or, idempotently, update the members of) a VNET on this host.

        `security` none | auth | conf. Keys come with the request (`keys`: the same fields as a
        keys-file entry) or from the keys file named in the configuration. `mtu`: a smaller MTU
        than the largest that fits the underlay (the default); an existing VNET keeps its own.
        """
        if not isinstance(vnet, int) or isinstance(vnet, bool) or not 1 <= vnet <= MAX_VNET_ID:
            raise ServiceError(f"vnet: {vnet!r} is not a VNET id in 1..{MAX_VNET_ID}")
        transport = transport or self.config.transport
        if transport not in ("udp", "raw"):
            raise ServiceError(f"transport: {transport!r}, expected 'udp' or 'raw'")
        vnet_keys = self._keys_for(vnet, security, keys)
        level = vnet_keys.level if vnet_keys and vnet_keys.level else "none"
        if level != "none" and transport != "udp":
            raise ServiceError(f"security {level} travels as ESP in UDP (RFC 3948); use transport 'udp'")
        others = self._other_members(members)
        with self.lock:
            existing = self.forwarder.vnets.get(vnet)
            if existing is not None:
                return self._update_vnet(existing, transport, level, others, vnet_keys)
            fits = mtu_for(transport, self.config.underlay_mtu, level)
            if mtu is not None and not 576 <= mtu <= fits:
                raise ServiceError(f"vnet {vnet}: MTU {mtu} does not fit: with transport {transport}, security "
                                   f"{level} and an underlay MTU of {self.config.underlay_mtu}, at most {fits}")
            mtu = mtu or fits
            self.devices.ensure_bridge(bridge_name(vnet), mtu)
            offload = self.config.offload
            fd = handover.take(tap_name(vnet)) or open_tap(tap_name(vnet), offload=offload)
            try:
                self.devices.enslave(tap_name(vnet), bridge_name(vnet), mtu)
                self._install_keys(vnet, vnet_keys)
                self.forwarder.sas.set_members(vnet, others)  # ESP from non-members: refused before any HKDF
                port = VnetPort(vnet, fd, transport, mtu, others, offload, level)
                self.fastpath.add(port, tap_name(vnet))
                self.forwarder.add_vnet(port)
            except Exception:
                os.close(fd)
                self._install_keys(vnet, None)
                raise
            self._save()
            return self._describe(port)

    def _other_members(self, members: list[str] | None) -> tuple[str, ...]:
        """A VNET's member hosts (by default the configured ones), each an IPv4 address, less this host."""
        member_hosts = tuple(members) if members is not None else self.config.member_hosts
        for m in member_hosts:
            try:
                ipaddress.IPv4Address(m)
            except ValueError:
                raise ServiceError(f"members: {m!r} is not an IPv4 address") from None
        return tuple(m for m in member_hosts if m != self.config.underlay_address)

    def _update_vnet(self, port: VnetPort, transport: str, level: str, others: tuple[str, ...],
                     vnet_keys: VnetKeys | None) -> dict[str, Any]:
        """`create_vnet` on a VNET that exists (under the lock): new members and keys, same transport and security."""
        if (port.transport, port.security) != (transport, level):
            raise ServiceError(f"vnet {port.vnet} exists with transport {port.transport}, security "
                               f"{port.security}; delete it first to change them")
        if others != port.members:
            try:
                self.fastpath.members_changed(port, others)
            except (ValueError, OSError) as e:  # LayoutError: too many members; BpfError: the map refused
                raise ServiceError(f"vnet {port.vnet}: new members not set on its eBPF path: {e}; replace the VNET "
                                   "(vnet.replace) to carry it in userspace") from None
        port.members = others
        if vnet_keys is not None:
            self._install_keys(port.vnet, vnet_keys)
        self.forwarder.sas.set_members(port.vnet, others)
        self._save()
        return self._describe(port)

    def _keys_for(self, vnet: int, security: str | None, keys: dict[str, Any] | None) -> VnetKeys | None:
        vnet_keys: VnetKeys | None
        if keys is not None:
            try:
                vnet_keys = parse_vnet_keys(vnet, {"security": security or "none", **keys})
            except (ValueError, TypeError) as e:
                raise ServiceError(f"keys: {e}") from None
        else:
            vnet_keys = self.keyring.get(vnet)
        if security not in (None, "none", "auth", "conf"):
            raise ServiceError(f"security: {security!r}, expected none, auth or conf")
        if security not in (None, "none") and (vnet_keys is None or vnet_keys.level != security):
            where = f"the keys file {self.config.keys_file}" if self.config.keys_file else "the request"
            raise ServiceError(f"vnet {vnet} security {security} needs its keys: none with that level in {where} "
                               "(pass keys={secrets: {epoch: hex}, send_epoch: N} or add it to the keys file)")
        return vnet_keys

    def set_keys(self, vnet: int, keys: dict[str, Any]) -> dict[str, Any]:
        """Replace a VNET's keys (rotation: add the new epoch everywhere, then send with it,
        then drop the old one; receivers accept every epoch they hold, so nothing is lost)."""
        with self.lock:
            port = self.forwarder.vnets.get(vnet)
            if port is None:
                raise ServiceError(f"vnet {vnet} does not exist on this host")
            try:
                vnet_keys = parse_vnet_keys(vnet, {"security": port.security, **keys})
            except (ValueError, TypeError) as e:
                raise ServiceError(f"keys: {e}") from None
            self._install_keys(vnet, vnet_keys)
            self._save()
            return {"vnet": vnet, **self.forwarder.sas.describe(vnet)}

    def _install_keys(self, vnet: int, keys: VnetKeys | None) -> None:
        """Keys for the SAs (rebuilt where a secret changed, all gone with None: audit R7) and
        no VARP key derived from the previous ones."""
        self.forwarder.sas.set_keys(vnet, keys)
        self.varp_auth.forget(vnet)

    def replace_vnet(self, vnet: int, security: str | None = None, keys: dict[str, Any] | None = None,
                     mtu: int | None = None, members: list[str] | None = None) -> dict[str, Any]:
        """Make a VNET again with another security level or MTU (what `create_vnet` refuses to
        change in place): delete it, create it, plug the interfaces that were in it back in."""
        with self.lock:
            port = self.forwarder.vnets.get(vnet)
            if port is None:
                raise ServiceError(f"vnet {vnet} does not exist on this host; create it with vnet.create")
            plugged = [(ifname, mac) for ifname, (v, mac) in self.ports.items() if v == vnet]
            transport = port.transport
            self.delete_vnet(vnet)
            result = self.create_vnet(vnet, transport, members, security, keys, mtu)
            for ifname, mac in plugged:
                if self.devices.index(ifname) is not None:
                    self.attach(vnet, ifname, mac.hex(":"))
            return result

    def delete_vnet(self, vnet: int) -> dict[str, Any]:
        with self.lock:
            port = self.forwarder.remove_vnet(vnet)
            if port is None:
                raise ServiceError(f"vnet {vnet} does not exist on this host (see `vnet.list`)")
            os.close(port.fd)
            self._install_keys(vnet, None)  # a later VNET with this id must not inherit keys or SAs (R7)
            for ifname, (v, mac) in list(self.ports.items()):
                if v == vnet:
                    del self.ports[ifname]
                    self.local_macs.discard((v, mac))
            self.cache.forget_vnet(vnet)
            self.fastpath.remove(vnet)
            self.devices.delete(bridge_name(vnet))
            self._save()
            return {"vnet": vnet, "deleted": True}

    def list_vnets(self) -> list[dict[str, Any]]:
        return [self._describe(p) for p in sorted(self.forwarder.vnets.values(), key=lambda p: p.vnet)]

    def _describe(self, port: VnetPort) -> dict[str, Any]:
        return {
            "vnet": port.vnet, "bridge": bridge_name(port.vnet), "tap": tap_name(port.vnet),
            "transport": port.transport, "offload": port.offload, "mtu": port.mtu,
            **self.forwarder.sas.describe(port.vnet), "members": list(port.members),
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
            result["gso_max_size"] = gso_max_size_for(port.mtu, port.secure)
        return result

    def register_local(self, vnet: int, mac: str, ifname: str | None) -> None:
        """A NIC someone else plugged into the VNET's bridge (libvirt, for a VM): its MAC is
        local now; tell every host at once."""
        raw_mac = parse_mac(mac)
        with self.lock:
            if vnet not in self.forwarder.vnets:
                self.varp_counts["nic_on_unknown_vnet"] += 1
                return
            if ifname:
                self.ports[ifname] = (vnet, raw_mac)
            self.local_macs.add((vnet, raw_mac))
            self._run(self.cache.forget(vnet, raw_mac))
            self.devices.forget_fdb(bridge_name(vnet), raw_mac.hex(":"))
        self.announce(vnet, raw_mac.hex(":"))

    def expect_departure(self, vnet: int, mac: str, departing: bool) -> None:
        """A VM NIC here is (or is no longer) migrating away: an ANNOUNCE for its MAC from another
        host then means it has arrived there, before this host's own `unregister_local`."""
        key = (vnet, parse_mac(mac))
        with self.lock:
            (self.departing.add if departing else self.departing.discard)(key)

    def unregister_local(self, vnet: int, mac: str) -> None:
        raw_mac = parse_mac(mac)
        with self.lock:
            self.departing.discard((vnet, raw_mac))
            self.local_macs.discard((vnet, raw_mac))
            for ifname, entry in list(self.ports.items()):
                if entry == (vnet, raw_mac):
                    del self.ports[ifname]

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
        msg = self.varp_auth.message(VarpOp.ANNOUNCE, vnet, raw_mac)
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
        drops = sum(self.forwarder.drops.values(), Counter[str]())
        return {"drops": dict(drops), "varp": dict(self.varp_counts), "varp_rx": self.forwarder.varp_rx,
                # SA table evictions (R17), ESN resyncs (R8), senders stopped before a wrap (R1)
                "esp_sa": {**self.forwarder.sas.counts, "inbound_sas": self.forwarder.sas.inbound_count()},
                "vnets": {p.vnet: self._describe(p) for p in self.forwarder.vnets.values()},
                "ebpf": self.fastpath.status(), "rx_fixed": dict(self.forwarder.rx_fixed)}  # see unflagged.py

    def tick(self) -> None:
        """The VARP timer. The lock covers only the cache's decisions (bounded by its limits);
        the sends they call for happen after it is released. An error costs one tick, counted
        and logged at a limited rate, never the timer task (and with it the gatekeeper)."""
        try:
            with self.lock:
                commands = self.cache.tick()
                self.fastpath.sync(self.cache.fdb)
                wanted = self.fastpath.ageing_due(self.cache)
            self._run(commands)
            if wanted:  # eBPF VNETs: what their bridges saw confirms entries (one netlink dump, unlocked)
                for vnet, mac in self.fastpath.confirm_from_bridges(wanted, self.cache):
                    self.on_stale(vnet, mac)
        except Exception as e:
            reason = reason_of(e)
            self.forwarder.drops["ctl"][reason] += 1
            self.forwarder._errlog("varp-timer", reason, e)

    # --- called by the forwarding threads -----------------------------------------------------
    # Each takes the lock for the cache's decision only and sends (requests, queued frames) after
    # releasing it, so a forwarding thread never waits for another one's sends.

    def on_miss(self, vnet: int, mac: bytes, frame: bytes) -> None:
        with self.lock:
            commands = self.cache.miss(vnet, mac, frame)
        self._run(commands)

    def on_stale(self, vnet: int, mac: bytes) -> None:
        with self.lock:
            commands = self.cache.use_stale(vnet, mac)
        self._run(commands)

    def on_learn(self, vnet: int, mac: bytes, addr: str) -> None:
        with self.lock:
            self.varp_counts["learned"] += 1
            commands = self.cache.learn(vnet, mac, addr)
            self.fastpath.announced(vnet, mac, self.cache.fdb)  # a migrated VM's RARP, learned: the map at once
        self._run(commands)

    def on_varp(self, buf: bytes, src: str) -> None:
        try:
            msg = parse_varp(buf)
        except WireError:
            self.varp_counts["bad"] += 1
            return
        port = self.forwarder.vnets.get(msg.vnet)
        if port is None:
            self.varp_counts["not_member"] += 1
            return
        if port.members and src not in port.members:
            self.varp_counts["not_member_host"] += 1  # R18: the VNET lists its hosts; this is none of them
            return
        why = self.varp_auth.refused(msg, buf)
        if why is not None:
            self.varp_counts[why] += 1
            return
        key = (msg.vnet, msg.vmac)
        if msg.op is VarpOp.REQUEST:
            self.varp_counts["request_rx"] += 1
            if key in self.local_macs:
                reply = self.varp_auth.message(VarpOp.ANNOUNCE, msg.vnet, msg.vmac)
                self.forwarder.send_varp(reply, src)
                self.varp_counts["reply_tx"] += 1
            return
        self.varp_counts["announce_rx"] += 1
        if not isinstance(msg.addr, ipaddress.IPv4Address) or (key in self.local_macs and key not in self.departing):
            self.varp_counts["announce_ignored"] += 1
            return
        if str(msg.addr) != src:
            # R18: a host announces only itself. The body's address is not the sender's (vnetd
            # re-injects relayed packets with their original source, so relaying keeps this true):
            # believing it would let anyone point a MAC, or a departing VM, at a third address.
            self.varp_counts["announce_not_from_addr"] += 1
            return
        with self.lock:
            if key in self.local_macs:  # a VM migrating away resumed there: send its frames there now
                self.local_macs.discard(key)
                self.departing.discard(key)
                self.devices.forget_fdb(bridge_name(msg.vnet), msg.vmac.hex(":"))  # not to the old TAP
                self.varp_counts["moved_away"] += 1
            commands = self.cache.announce(msg.vnet, msg.vmac, str(msg.addr))
            self.fastpath.announced(msg.vnet, msg.vmac, self.cache.fdb)  # the eBPF map at once (item 3)
        self._run(commands)

    # --- helpers ------------------------------------------------------------------------------

    def _run(self, commands: list[Command]) -> None:
        """Carry out what the cache decided. Needs no lock (the forwarding paths call it after
        releasing theirs); refusals (`Dropped`) are counted as ctl drops `varp_<reason>`."""
        drops = self.forwarder.drops["ctl"]
        for cmd in commands:
            if isinstance(cmd, SendRequest):
                port = self.forwarder.vnets.get(cmd.vnet)
                if port is None:
                    continue
                msg = self.varp_auth.message(VarpOp.REQUEST, cmd.vnet, cmd.mac)
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
            "vnets": [{"vnet": p.vnet, "transport": p.transport, "members": list(p.members),
                       "security": p.security, "keys": self._keys_state(p.vnet), "mtu": p.mtu}
                      for p in self.forwarder.vnets.values()],
            "ports": [{"ifname": i, "vnet": v, "mac": m.hex(":")} for i, (v, m) in self.ports.items()],
        }
        # The state holds VNET secrets: readable by root only; all or nothing, and durable.
        write_atomic(self.state_file, json.dumps(state, indent=1).encode())

    def _keys_state(self, vnet: int) -> dict[str, Any] | None:
        keys = self.forwarder.sas.keys(vnet)
        if keys is None:
            return None
        return {"send_epoch": keys.send_epoch, "secrets": {str(e): k.hex() for e, k in keys.secrets.items()}}

    def _load_state(self) -> dict[str, Any]:
        """The saved state, or {} when there is none. A file that does not parse (empty after a
        crash, truncated, garbage) is moved aside for a human and the gatekeeper starts empty:
        the manager, or whoever made the VNETs, makes them again (converge)."""
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            state = json.loads(self.state_file.read_bytes())
            if not isinstance(state, dict) or not all(isinstance(state.get(k, []), list) for k in ("vnets", "ports")):
                raise ValueError("not an object with lists 'vnets' and 'ports'")
            return state
        except (ValueError, UnicodeDecodeError) as e:
            aside = move_aside(self.state_file)
            log.warning("state file %s is corrupt (%s); moved it to %s and starting with no VNETs: the manager "
                        "re-creates them (look at that file, then delete it)", self.state_file, e, aside)
            return {}

    def _restore(self) -> None:
        """After a restart: recreate the VNETs and re-attach ports that still exist."""
        state = self._load_state()
        for v in state.get("vnets", []):
            try:
                self._restore_vnet(v)
            except (ServiceError, KeyError, TypeError, ValueError) as e:  # one bad entry costs that entry only
                log.warning("state file %s: skipped the VNET entry %.200r (%s); whoever made it (the manager) makes "
                            "it again", self.state_file, v, e)
        for p in state.get("ports", []):
            try:
                if self.devices.index(p["ifname"]) is not None:
                    self.attach(p["vnet"], p["ifname"], p["mac"])
            except (ServiceError, KeyError, TypeError, ValueError) as e:
                log.warning("state file %s: skipped the port entry %.200r (%s); attach it again", self.state_file, p, e)

    def _restore_vnet(self, v: dict[str, Any]) -> None:
        try:
            self.create_vnet(v["vnet"], v["transport"], v["members"], v.get("security"), v.get("keys"), v.get("mtu"))
        except ServiceError as e:  # the underlay shrank since: the largest MTU that fits now
            log.warning("restoring vnet %s: %s; using the largest MTU that fits", v["vnet"], e)
            self.create_vnet(v["vnet"], v["transport"], v["members"], v.get("security"), v.get("keys"))
