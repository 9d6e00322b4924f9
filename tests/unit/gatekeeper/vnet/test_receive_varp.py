"""VARP as the service receives it on `security: none` VNETs (audit R18): an ANNOUNCE speaks only
for its sender, member lists keep strangers out, and the forwarding threads' calls send nothing
while holding the service lock."""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.config import GatekeeperConfig
from gatekeeper.vnet import service as service_module
from gatekeeper.vnet.esp_sa import SecurityAssociations
from gatekeeper.vnet.port import VnetPort
from gatekeeper.vnet.service import VnetService
from gatekeeper.vnet.varp_cache import VarpLimits
from softudc.wire import VarpMessage, VarpOp, build_varp

VICTIM = bytes.fromhex("525400000001")
ME, PEER, EVIL, THIRD = "10.0.0.2", "10.0.0.1", "198.51.100.7", "203.0.113.66"


class FakeForwarder:
    """The forwarder as the service's VARP code uses it; records sends and whether the service
    lock was held during each."""

    def __init__(self, *, local_addr: str, **_: Any) -> None:
        self.vnets: dict[int, VnetPort] = {}
        self.sas = SecurityAssociations(local_addr)
        self.drops: dict[str, Counter[str]] = {"ctl": Counter()}
        self.sent: list[tuple[bytes, str, bool]] = []
        self.service: VnetService | None = None

    def _locked(self) -> bool:
        assert self.service is not None
        return bool(self.service.lock._is_owned())  # type: ignore[attr-defined]

    def send_varp(self, msg: bytes, addr: str) -> None:
        self.sent.append((msg, addr, self._locked()))

    def send_frame(self, port: VnetPort, frame: bytes, addr: str, drops: Counter[str]) -> None:
        self.sent.append((frame, addr, self._locked()))

    def flood_targets(self, port: VnetPort) -> tuple[str, ...]:
        return port.members or ("224.10.0.1",)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> VnetService:
    monkeypatch.setattr(service_module, "Forwarder", FakeForwarder)
    config = GatekeeperConfig(host="h", api_socket=str(tmp_path / "api.sock"), underlay_interface="eth0",
                              underlay_address=ME)
    devices: Any = SimpleNamespace(forget_fdb=lambda *a: None)
    svc = VnetService(config, devices, time.monotonic, None)
    svc.forwarder.service = svc  # type: ignore[attr-defined]
    svc.forwarder.vnets[5] = VnetPort(5, -1, "udp", 1450)
    return svc


def announce(addr: str, vnet: int = 5, mac: bytes = VICTIM) -> bytes:
    return build_varp(VarpMessage(VarpOp.ANNOUNCE, vnet, mac, ipaddress.IPv4Address(addr)))


@pytest.mark.adversarial
def test_r18_an_announce_for_a_third_address_is_not_believed(service: VnetService) -> None:
    """The audit's varp_spoof: one forged ANNOUNCE from 198.51.100.7 pointed the victim MAC at
    203.0.113.66."""
    service.on_varp(announce(THIRD), EVIL)
    assert (5, VICTIM) not in service.cache.fdb
    assert service.varp_counts["announce_not_from_addr"] == 1
    service.on_varp(announce(PEER), PEER)  # a host announcing itself is believed
    assert service.cache.fdb[(5, VICTIM)] == PEER


@pytest.mark.adversarial
def test_r18_a_departing_mac_does_not_move_on_a_forged_announce(service: VnetService) -> None:
    service.local_macs.add((5, VICTIM))
    service.expect_departure(5, VICTIM.hex(":"), True)
    service.on_varp(announce(THIRD), EVIL)
    assert (5, VICTIM) in service.local_macs and (5, VICTIM) not in service.cache.fdb
    assert service.varp_counts["announce_not_from_addr"] == 1
    service.on_varp(announce(PEER), PEER)  # the real destination resumed the VM
    assert (5, VICTIM) not in service.local_macs and service.cache.fdb[(5, VICTIM)] == PEER


@pytest.mark.adversarial
def test_r18_varp_from_a_host_outside_the_member_list_is_dropped(service: VnetService) -> None:
    service.forwarder.vnets[5].members = (PEER,)
    service.on_varp(announce(EVIL), EVIL)
    assert service.varp_counts["not_member_host"] == 1 and (5, VICTIM) not in service.cache.fdb
    service.on_varp(announce(PEER), PEER)
    assert service.cache.fdb[(5, VICTIM)] == PEER


@pytest.mark.adversarial
def test_r18_forged_announces_from_one_host_are_capped_and_counted(service: VnetService) -> None:
    service.cache.limits = VarpLimits(max_entries=100, max_entries_per_vnet=50)
    for i in range(1000):
        service.on_varp(announce(EVIL, mac=bytes([2, 0]) + i.to_bytes(4, "big")), EVIL)
    assert len(service.varp_entries()) == 50
    assert service.forwarder.drops["ctl"]["varp_cache_full"] == 950


def test_r18_sends_happen_after_the_lock_is_released(service: VnetService) -> None:
    """A miss, a tick's probes and an announce's queued frames are sent without the service lock,
    so no forwarding thread waits behind another's sends (and the tick holds it only to decide)."""
    service.on_miss(5, VICTIM, b"frame")
    service.cache._clock = lambda: time.monotonic() + 1.5
    service.tick()
    service.on_varp(announce(PEER), PEER)
    sent = service.forwarder.sent  # type: ignore[attr-defined]
    assert len(sent) >= 3 and not any(locked for _, _, locked in sent)
    assert (b"frame", PEER, False) in sent


def test_a_failing_tick_is_counted_and_the_timer_lives(service: VnetService, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> list[object]:
        raise ValueError("a bug")

    monkeypatch.setattr(service.forwarder, "_errlog", lambda *a: True, raising=False)
    monkeypatch.setattr(service.cache, "tick", boom)
    service.tick()
    assert service.forwarder.drops["ctl"]["error_ValueError"] == 1


@pytest.mark.adversarial
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([1, 2, 2, 3]), st.sampled_from([5, 5, 6, 0, 2**100]),
                          st.sampled_from([VICTIM, b"\x03" + bytes(5), bytes(6)]),
                          st.sampled_from([PEER, EVIL, THIRD, "0.0.0.0", "224.10.0.1"]),
                          st.sampled_from([PEER, EVIL]), st.integers(0, 80)), max_size=20))
def test_r18_any_varp_message_is_counted_and_never_raises(service: VnetService,
                                                          msgs: list[tuple[int, int, bytes, str, str, int]]) -> None:
    """Whatever VARP arrives (any opcode, VNET, MAC, announced address, sender, truncation),
    on_varp raises nothing and every message lands in exactly one outcome counter."""
    outcomes = ("bad", "not_member", "not_member_host", "unauthenticated", "request_rx", "announce_rx")
    for op, vnet, mac, addr, src, cut in msgs:
        msg = build_varp(VarpMessage(VarpOp.REQUEST, vnet, mac, ipaddress.IPv4Address(addr)))
        msg = (msg[:2] + op.to_bytes(2, "big") + msg[4:])[:cut or None]
        before = sum(service.varp_counts[k] for k in outcomes)
        service.on_varp(msg, src)
        assert sum(service.varp_counts[k] for k in outcomes) == before + 1
    for addr in service.cache.fdb.values():
        assert addr in (PEER, EVIL)  # only ever a sender's own address
