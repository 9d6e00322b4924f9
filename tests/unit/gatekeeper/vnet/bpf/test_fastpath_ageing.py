"""FastPath's ageing on the eBPF path (the bridge's FDB confirms VARP entries), with a fake dump and
fake clocks: the VARP tick's sequence (cache.tick, ageing_due under the lock, confirm_from_bridges
after it) run by hand as VnetService.tick runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.config import parse_config
from gatekeeper.vnet.bpf import bridgefdb, fastpath
from gatekeeper.vnet.bpf.bridgefdb import FdbAge
from gatekeeper.vnet.bpf.fastpath import FastPath
from gatekeeper.vnet.varp_cache import SendRequest, State, VarpCache, VarpTimers

CONFIG = parse_config({"host": "h1", "api_socket": "/tmp/x.sock",
                       "underlay": {"interface": "nosuchdev0", "address": "10.0.0.1"},
                       "dataplane": {"datapath": "auto"}})
MAC, IDLE, LOCAL = bytes.fromhex("020000000a02"), bytes.fromhex("020000000a03"), bytes.fromhex("020000000a04")
TAP, GRO_PORT, VM_PORT, OTHER_TAP = 11, 12, 13, 21  # ifindexes: VNET 7's TAP and GRO veth, a VM's port, VNET 8


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Bridge:
    """The fake dump: the bridges' learned entries, with stamps on the shared clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.learned: dict[tuple[int, bytes], tuple[float, float]] = {}  # -> (updated at, used at)
        self.dumps = 0
        self.fail: OSError | None = None

    def frame_from(self, port: int, mac: bytes) -> None:
        self.learned[(port, mac)] = (self.clock.now, self.learned.get((port, mac), (0.0, 0.0))[1])

    def frame_to(self, port: int, mac: bytes) -> None:
        self.learned[(port, mac)] = (self.learned[(port, mac)][0], self.clock.now)

    def dump(self, limit: int = 65536, timeout: float = 1.0) -> list[FdbAge]:
        self.dumps += 1
        if self.fail is not None:
            raise self.fail
        return [FdbAge(port, mac, self.clock.now - upd, self.clock.now - used)
                for (port, mac), (upd, used) in self.learned.items()]


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FastPath, VarpCache, Bridge, Clock]:
    clock = Clock()
    cache = VarpCache(clock, VarpTimers(ttl=60.0, stale_ttl=60.0))
    fp = FastPath(CONFIG, tmp_path / "state.json")
    fp.clock = clock
    fp._taps = {7: TAP, 8: OTHER_TAP}  # as _install leaves them (VNET 7 with its GRO veth)
    fp._bridge_ports = {TAP: 7, GRO_PORT: 7, OTHER_TAP: 8}
    bridge = Bridge(clock)
    monkeypatch.setattr(bridgefdb, "dump", bridge.dump)
    return fp, cache, bridge, clock


def tick(fp: FastPath, cache: VarpCache) -> list[object]:
    """VnetService.tick without the sends: the commands, and what on_stale would ask."""
    out: list[object] = list(cache.tick())
    wanted = fp.ageing_due(cache)
    if wanted:
        for vnet, mac in fp.confirm_from_bridges(wanted, cache):
            out += cache.use_stale(vnet, mac)
    return out


def test_a_mac_the_bridge_keeps_seeing_stays_past_ttl_plus_stale_ttl(rig: tuple[FastPath, VarpCache, Bridge, Clock]
                                                                     ) -> None:
    fp, cache, bridge, clock = rig
    cache.announce(7, MAC, "10.0.0.2")
    cache.announce(7, IDLE, "10.0.0.3")
    for _ in range(300 * 4):  # 300 s of 0.25 s ticks; MAC sends a frame a second, through the GRO veth
        clock.now += 0.25
        if clock.now % 1 == 0:
            bridge.frame_from(GRO_PORT, MAC)
        tick(fp, cache)
        assert cache.state_of(7, MAC) is State.REACHABLE and (7, MAC) in cache.fdb
    assert cache.state_of(7, IDLE) is None  # nothing from it: aged out as before (at 120 s)
    assert fp.ageing["errors"] == 0 and fp.ageing["confirmed"] >= 300 / 60  # once per ttl at least
    # bounded: one dump per ttl/8 = 7.5 s at most, and only while some entry is ttl/2 old
    assert bridge.dumps <= 300 / 7.5 + 1


def test_no_dump_while_every_entry_is_young_or_there_is_no_ebpf_vnet(
        rig: tuple[FastPath, VarpCache, Bridge, Clock]) -> None:
    fp, cache, bridge, clock = rig
    cache.announce(7, MAC, "10.0.0.2")
    for _ in range(100):  # 25 s < ttl/2
        clock.now += 0.25
        tick(fp, cache)
    assert bridge.dumps == 0
    fp._bridge_ports = {}
    clock.now += 40
    assert fp.ageing_due(cache) == {}


def test_only_the_vnets_ebpf_ports_confirm(rig: tuple[FastPath, VarpCache, Bridge, Clock]) -> None:
    """A MAC the bridge learned on a VM's port (it is local now) or on another VNET's TAP says
    nothing about the remote entry: it ages out."""
    fp, cache, bridge, clock = rig
    cache.announce(7, LOCAL, "10.0.0.2")
    cache.announce(9, MAC, "10.0.0.2")  # VNET 9 runs in userspace: the forwarder confirms it
    for _ in range(130 * 4):
        clock.now += 0.25
        bridge.frame_from(VM_PORT, LOCAL)
        bridge.frame_from(OTHER_TAP, LOCAL)
        bridge.frame_from(TAP, MAC)
        tick(fp, cache)
    assert cache.state_of(7, LOCAL) is None and cache.state_of(9, MAC) is None


def test_a_stale_entry_only_sent_to_is_reconfirmed(rig: tuple[FastPath, VarpCache, Bridge, Clock]) -> None:
    """Frames to a MAC and none back (a one-way stream): as on the forwarder, its STALE entry in
    use is re-confirmed by REQUESTs (and, unanswered, removed), not left to time out unasked."""
    fp, cache, bridge, clock = rig
    cache.announce(7, MAC, "10.0.0.2")
    bridge.frame_from(TAP, MAC)
    out: list[object] = []
    for _ in range(70 * 4):
        clock.now += 0.25
        bridge.frame_to(TAP, MAC)
        out += tick(fp, cache)
    assert fp.ageing["reconfirm"] == 1  # probing started once ...
    assert out.count(SendRequest(7, MAC)) == cache.timers.probe_max  # ... unanswered here: removed after
    assert cache.state_of(7, MAC) is None


def test_a_failing_dump_is_counted_and_ages_as_before(rig: tuple[FastPath, VarpCache, Bridge, Clock],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    fp, cache, bridge, clock = rig
    bridge.fail = bridgefdb.BridgeFdbError("bridge FDB dump: no answer within 1.0 s")
    cache.announce(7, MAC, "10.0.0.2")
    for _ in range(130 * 4):
        clock.now += 0.25
        bridge.frame_from(TAP, MAC)
        tick(fp, cache)
    assert cache.state_of(7, MAC) is None
    assert fp.ageing["errors"] == bridge.dumps > 0
    assert "reading the bridges' FDB failed" in caplog.text
    assert fp.status()["ageing"] == fp.ageing


def test_remove_forgets_the_vnets_ports(rig: tuple[FastPath, VarpCache, Bridge, Clock]) -> None:
    fp, _, _, _ = rig
    fp.remove(7)
    assert fp._bridge_ports == {OTHER_TAP: 8}
    assert fastpath.AGEING_MIN_AGE + fastpath.AGEING_INTERVAL < 1  # confirmed before an entry goes STALE
