"""The gatekeeper's side of the eBPF data path: which VNETs run on it, and keeping its maps equal
to the VARP cache.

An eBPF VNET keeps its TAP and its place in the userspace forwarder: `vnet_encap` sits on the TAP's
tc egress and sends known unicast straight to the underlay; misses and floods continue to the TAP
(`CFG_PUNT`), where the forwarder floods them and VARP resolves them as before. `vnet_decap` on the
underlay puts frames of eBPF VNETs into the TAP's ingress (the bridge); everything else reaches the
forwarder's socket. `sync()` (each VARP tick) copies the cache's FDB into `ebs_fdb`.

Ageing: the frames BPF carries never reach the forwarder, so they cannot confirm VARP entries
(`VarpCache.seen`) as the forwarder's do; an entry in use would go STALE at ttl and leave the map
at ttl + stale_ttl, and its next frame would miss. The VNET's bridge learns the remote MACs on the
port decapsulated frames enter by (the TAP, or the GRO veth's bridge side) and keeps their ages:
`ageing_due()` picks, at most every ttl/8 s, the eBPF VNETs' entries ttl/2 old or older, and
`confirm_from_bridges()` (outside the service lock: one netlink dump, bridgefdb.py) feeds what the
bridge saw from them into `seen`, and names the STALE ones it still forwarded to (re-confirmed by a
probe, as `use_stale` does for the forwarder's).

GRO after decapsulation is chosen once from the underlay's offload features (gro.py) and reported
(`status()["gro"]`, metrics, log). When it is on, each eBPF VNET gets a veth pair on its bridge
(grolink.py): decapsulated frames go out of its decap side and are merged by the bridge side's GRO.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from gatekeeper.config import GatekeeperConfig
from gatekeeper.vnet.bpf import bridgefdb, gro, grolink, handover, layouts
from gatekeeper.vnet.bpf.libbpf import BpfError
from gatekeeper.vnet.bpf.loader import Datapath, detach, remove_pins
from gatekeeper.vnet.bpf.selection import PathChoice, bpf_problem, choose, metrics_lines
from gatekeeper.vnet.devices import bridge_name, tap_name
from gatekeeper.vnet.port import VnetPort
from gatekeeper.vnet.varp_cache import VarpCache

log = logging.getLogger("gatekeeper.vnet.bpf")
BPF_F_INGRESS = 1
VSTATS_FIELDS = ("tx_frames", "tx_bytes", "rx_frames", "rx_bytes")  # Datapath.vnet_stats()
AGEING_MIN_AGE = 0.5  # x ttl: entries this old are confirmed from the bridges
AGEING_INTERVAL = 0.125  # x ttl: at most one bridge dump this often


class FastPath:
    def __init__(self, config: GatekeeperConfig, state_file: Path | None) -> None:
        self.config = config
        self.pin_dir = state_file.with_name("bpf") if state_file is not None else None
        self.choices: dict[int, PathChoice] = {}
        self._taps: dict[int, int] = {}  # eBPF vnet -> TAP ifindex
        self._gro_links: dict[int, int] = {}  # eBPF vnet -> ifindex of its GRO veth's decap side
        self.gro: gro.GroChoice | None = None
        self._ports: dict[int, VnetPort] = {}
        self._folded: dict[int, tuple[int, int, int, int]] = {}  # BPF totals already in port.stats
        self._dp: Datapath | None = None
        self._adopted: dict[layouts.FdbKey, str] = {}  # ebs_fdb as a predecessor left it (handover.py)
        self._problem: str | None = None
        self._probed = False
        self.sync_errors = 0
        self.clock: Callable[[], float] = time.monotonic
        self._bridge_ports: dict[int, int] = {}  # ifindex of a port eBPF frames enter a bridge by -> vnet
        self._next_ageing = 0.0
        self.ageing = {"dumps": 0, "confirmed": 0, "reconfirm": 0, "errors": 0}

    def problem(self) -> str | None:
        if not self._probed:
            self._probed = True
            self._problem = "no state directory to pin maps in" if self.pin_dir is None else bpf_problem()
        return self._problem

    def add(self, port: VnetPort, tap: str) -> PathChoice:
        """Choose the path for a new VNET (raises SelectionError when `ebpf` is forced and impossible)."""
        problem = None if self.config.datapath == "userspace" else self.problem()
        choice = choose(port.vnet, self.config.datapath, port.transport, port.security, len(port.members) + 1,
                        problem)
        if choice.path == "ebpf":
            try:
                self._install(port, tap)
            except (BpfError, OSError, gro.GroError, grolink.GroLinkError) as e:
                if self.config.datapath == "ebpf":
                    raise
                choice = PathChoice(port.vnet, "userspace", f"eBPF set-up failed: {e}")
                log.warning("vnet %d: userspace data path (%s)", port.vnet, choice.reason)
        self.choices[port.vnet] = choice
        return choice

    def _datapath(self) -> Datapath:
        if self._dp is None:
            assert self.pin_dir is not None
            underlay = socket.if_nametoindex(self.config.underlay_interface)  # before anything is mounted
            dp = Datapath(self.pin_dir)
            self._adopted = dp.fdb()  # empty unless a gatekeeper restarted in place (or crashed)
            # bpf_fib_lookup needs forwarding on the lookup device (docs/ebpf.md)
            Path(f"/proc/sys/net/ipv4/conf/{self.config.underlay_interface}/forwarding").write_text("1\n")
            dp.set_cfg(layouts.Cfg(self.config.underlay_address, underlay, self.cfg_flags()))
            dp.attach("vnet_decap", underlay)
            self._dp = dp
            self.gro = _choose_gro(self.config.underlay_interface)
        return self._dp

    def cfg_flags(self) -> int:
        """ebs_cfg flags: misses and floods go on to the TAP (the forwarder floods and resolves them);
        with learning on, a flood from a MAC new here or moved goes up to the forwarder once (vnet_dp.c
        learn_first), so a migrated VM's RARP redirects its traffic before its new host's ANNOUNCE."""
        return layouts.CFG_PUNT | (layouts.CFG_LEARN if self.config.learn else 0)

    def _install(self, port: VnetPort, tap: str) -> None:
        dp = self._datapath()
        ifindex = socket.if_nametoindex(tap)
        dp.set_uplink(ifindex, port.vnet)
        local = layouts.Local(ifindex, BPF_F_INGRESS, port.mtu)
        if self.gro is not None and self.gro.on:  # decapsulated frames out of the veth, merged by its peer
            decap = socket.if_nametoindex(grolink.create(port.vnet, bridge_name(port.vnet), tap, port.mtu, self.gro))
            self._gro_links[port.vnet] = decap
            dp.set_uplink(decap, port.vnet)
            dp.attach("vnet_encap", decap)
            local = layouts.Local(decap, 0, port.mtu, punt_ifindex=ifindex)
        dp.set_local(port.vnet, local, self._member_ips(port.members))
        dp.attach("vnet_encap", ifindex, egress=True)
        self._taps[port.vnet] = ifindex
        self._bridge_ports[ifindex] = port.vnet
        if port.vnet in self._gro_links:  # frames enter the bridge by the veth's bridge side
            self._bridge_ports[socket.if_nametoindex(grolink.names(port.vnet)[1])] = port.vnet
        self._ports[port.vnet] = port
        self._folded[port.vnet] = dp.vnet_stats(port.vnet)

    def members_changed(self, port: VnetPort, members: tuple[str, ...]) -> None:
        """The VNET's member hosts are now `members` (a host joined it: an HA restart or a VM placed
        there). The programs check senders and flood against ebs_members, so an eBPF VNET's entry is
        rewritten, or frames from the new member are dropped (dec_non_member) and never flooded to
        it. More members than the map holds: LayoutError (the caller refuses the update)."""
        if port.vnet in self._taps and self._dp is not None:
            self._dp.update("ebs_members", layouts.u32(port.vnet), layouts.pack_members(self._member_ips(members)))

    def _member_ips(self, others: tuple[str, ...]) -> list[str]:
        """ebs_members of a VNET whose other member hosts are `others`: this host and them, or none
        at all when there is no list (the VNET is here only, or no list was configured): then, as
        on the userspace path, any sender is taken (vnet_dp.c is_member), until members_changed."""
        return [self.config.underlay_address, *others] if others else []

    def remove(self, vnet: int) -> None:
        self.choices.pop(vnet, None)
        self._ports.pop(vnet, None)
        self._folded.pop(vnet, None)
        ifindex = self._taps.pop(vnet, None)
        decap = self._gro_links.pop(vnet, None)
        self._bridge_ports = {i: v for i, v in self._bridge_ports.items() if v != vnet}
        if ifindex is not None and self._dp is not None:
            self._dp.delete("ebs_local", layouts.u32(vnet))
            self._dp.delete("ebs_members", layouts.u32(vnet))
            self._dp.delete("ebs_uplink", layouts.u32(ifindex))
            if decap is not None:
                self._dp.delete("ebs_uplink", layouts.u32(decap))
                grolink.delete(vnet)

    def sync(self, fdb: dict[tuple[int, bytes], str]) -> None:
        """Make ebs_fdb equal to the VARP cache's entries of eBPF VNETs (called under the service lock)."""
        if self._dp is None:
            return
        try:  # never raise into the VARP tick: its commands must still run
            self._fold_stats(self._dp)
            self._dp.sync_fdb({layouts.FdbKey(v, mac.hex(":")): addr for (v, mac), addr in fdb.items()
                               if v in self._taps})
        except (BpfError, OSError, ValueError) as e:
            self.sync_errors += 1
            if self.sync_errors & (self.sync_errors - 1) == 0:  # 1st, 2nd, 4th, 8th ...: rate-limited log
                log.warning("eBPF data path: FDB sync failed (%d so far): %s", self.sync_errors, e)

    def announced(self, vnet: int, mac: bytes, fdb: dict[tuple[int, bytes], str]) -> None:
        """An ANNOUNCE set (vnet, mac) in the VARP cache (`fdb`): its ebs_fdb entry follows at once,
        not at the next tick (a migrated VM's frames go to its new host without up to 0.25 s more)."""
        addr = fdb.get((vnet, mac))
        if addr is None or vnet not in self._taps or self._dp is None:
            return
        try:
            self._dp.update("ebs_fdb", layouts.FdbKey(vnet, mac.hex(":")).pack(), layouts.pack_fdb_val(addr))
        except (BpfError, OSError, ValueError) as e:
            self.sync_errors += 1
            log.warning("eBPF data path: FDB update for an ANNOUNCE failed: %s", e)

    def ageing_due(self, cache: VarpCache) -> dict[int, set[bytes]]:
        """At the VARP tick, under the service lock: the eBPF VNETs' entries to confirm from the
        bridges now (ttl/2 old or older; looked for at most every ttl/8 s), or {} (nothing to dump)."""
        now = self.clock()
        if not self._bridge_ports or now < self._next_ageing:
            return {}
        self._next_ageing = now + AGEING_INTERVAL * cache.timers.ttl
        return cache.aged(self._taps, AGEING_MIN_AGE * cache.timers.ttl)

    def confirm_from_bridges(self, wanted: dict[int, set[bytes]], cache: VarpCache) -> list[tuple[int, bytes]]:
        """Outside the service lock: one dump of the bridges' FDB. Each wanted entry the bridge
        learned on its VNET's eBPF port is confirmed as of the last frame from it (`cache.saw`; the
        next tick applies it). Returns the STALE ones the bridge saw nothing from but forwarded to
        within ttl/2: in use, so the caller re-confirms them (`use_stale`: a probe)."""
        try:
            entries = bridgefdb.dump()
        except OSError as e:
            self.ageing["errors"] += 1
            if self.ageing["errors"] & (self.ageing["errors"] - 1) == 0:
                log.warning("eBPF data path: reading the bridges' FDB failed (%d so far): %s; VARP entries in "
                            "use age out and are resolved again", self.ageing["errors"], e)
            return []
        self.ageing["dumps"] += 1
        recent = AGEING_MIN_AGE * cache.timers.ttl
        reconfirm: list[tuple[int, bytes]] = []
        for seen in entries:
            vnet = self._bridge_ports.get(seen.ifindex)
            if vnet is None or seen.mac not in wanted.get(vnet, ()):
                continue
            cache.saw(vnet, seen.mac, seen.updated)
            self.ageing["confirmed"] += 1
            if seen.updated >= recent and seen.used < recent and (vnet, seen.mac) in cache.stale:
                reconfirm.append((vnet, seen.mac))
        self.ageing["reconfirm"] += len(reconfirm)
        return reconfirm

    def _fold_stats(self, dp: Datapath) -> None:
        """Add what BPF carried since the last tick to the VNET's frame/byte counters (vnet.list)."""
        for vnet, port in self._ports.items():
            now = dp.vnet_stats(vnet)
            before = self._folded.get(vnet, (0, 0, 0, 0))
            for i, (a, b) in enumerate(zip(now, before, strict=True)):
                port.stats[i] += a - b  # tx_frames, tx_bytes, rx_frames, rx_bytes: stats[0..3]
            self._folded[vnet] = now

    def path(self, vnet: int) -> str:
        choice = self.choices.get(vnet)
        return choice.path if choice else "userspace"

    def status(self) -> dict[str, object]:
        """Each VNET's path (eBPF VNETs with what BPF carried for them: `bpf`), the sync errors and
        the programs' verdict counters (`counters`: every drop by reason)."""
        vnets: list[dict[str, object]] = []
        for c in self.choices.values():
            entry = c.as_dict()
            if c.path == "ebpf" and self._dp is not None:
                entry["bpf"] = dict(zip(VSTATS_FIELDS, self._dp.vnet_stats(c.vnet), strict=True))
            vnets.append(entry)
        return {"vnets": vnets, "sync_errors": self.sync_errors, "ageing": dict(self.ageing),
                "counters": self._dp.counters() if self._dp is not None else {},
                "gro": self.gro.as_dict() if self.gro is not None else None}

    def metrics(self) -> list[str]:
        lines = metrics_lines(list(self.choices.values())) + gro.metrics_lines(self.gro)
        if self._dp is not None:
            lines.append("# TYPE softudc_vnet_ebpf_packets_total counter")
            lines += [f'softudc_vnet_ebpf_packets_total{{verdict="{k}"}} {v}' for k, v in self._dp.counters().items()]
            lines.append("# TYPE softudc_vnet_ebpf_ageing_total counter")  # VARP entries confirmed from the bridges
            lines += [f'softudc_vnet_ebpf_ageing_total{{event="{k}"}} {v}' for k, v in self.ageing.items()]
        return lines

    def adopted(self, cache: VarpCache) -> None:
        """After the restore (under the service lock): the VARP cache starts from the FDB the previous
        gatekeeper left in the pinned map, so the first sync keeps it; TAPs handed over for VNETs
        that are gone are closed."""
        for key, addr in self._adopted.items():
            if key.vnet in self._taps:
                cache.announce(key.vnet, bytes.fromhex(key.mac.replace(":", "")), addr)
        if self._adopted:
            log.info("eBPF data path: %d FDB entries adopted from the pinned map", len(self._adopted))
        self._adopted = {}
        handover.close_rest()

    def stop(self, keep: bool = False) -> dict[str, int]:
        """Take the programs off the devices and drop the pins (the TAPs go with their fds). With
        `keep` (a restart in place, handover.py) leave programs, pins and GRO pairs as they are and
        return the eBPF VNETs' TAPs (name -> descriptor) for the successor to take over."""
        if self._dp is None:
            return {}
        if keep:
            self._dp.close()
            self._dp = None
            return {tap_name(vnet): port.fd for vnet, port in self._ports.items()}
        devices: list[int | str] = [self.config.underlay_interface, *self._taps.values(), *self._gro_links.values()]
        for ifindex in devices:
            try:
                detach(ifindex if isinstance(ifindex, int) else socket.if_nametoindex(ifindex))
            except (BpfError, OSError) as e:
                log.warning("eBPF data path: detach from %s: %s", ifindex, e)
        for vnet in self._gro_links:
            grolink.delete(vnet)
        self._gro_links.clear()
        self._dp.close()
        self._dp = None
        self._taps.clear()
        self._bridge_ports.clear()
        assert self.pin_dir is not None
        remove_pins(self.pin_dir)
        return {}


def _choose_gro(underlay: str) -> gro.GroChoice:
    """GRO after decapsulation for this underlay; off (with the reason) when its features cannot be read."""
    try:
        return gro.choose_for(underlay)
    except gro.GroError as e:
        log.warning("eBPF data path: GRO after decapsulation off: %s", e)
        return gro.GroChoice(underlay, "", False, f"the underlay's features could not be read: {e}")
