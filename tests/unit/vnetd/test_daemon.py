"""vnetd's receive path as the daemon runs it (`on_relay` on a stub socket, clocks injected): a
captured relay message replayed later is not injected again (audit R23); one bad input never ends
the loop."""

from __future__ import annotations

import ipaddress
import socket
from types import SimpleNamespace
from typing import Any, cast

import pytest

from softudc.wire.relay import RelayMessage, RelayOp, build_relay
from tests.unit.vnetd.test_core import PKT, WALL0, udp_to_group
from vnetd import daemon as daemon_module
from vnetd.config import VnetdConfig
from vnetd.core import RelayCore
from vnetd.daemon import Vnetd

KEY = bytes(range(32))
PEER = "10.0.0.1"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def time_ns(self) -> int:
        return WALL0 + int(self.t * 1e9)

    def time(self) -> float:
        return self.time_ns() / 1e9


class StubRelaySocket:
    def __init__(self) -> None:
        self.inbox: list[bytes] = []
        self.sent: list[tuple[bytes, Any]] = []

    def recvfrom(self, n: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise BlockingIOError
        return self.inbox.pop(0), (PEER, 1798)

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def _vnetd(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> tuple[Vnetd, StubRelaySocket, StubRelaySocket]:
    """The daemon without its sockets (they need a namespace and root): stubs in their place,
    returned beside it (relay, inject)."""
    monkeypatch.setattr(daemon_module, "time", SimpleNamespace(time_ns=clock.time_ns, monotonic=clock.monotonic,
                                                               time=clock.time))
    config = VnetdConfig("v2", "10.0.0.2", "eth0", "/nonexistent", KEY, peers=(PEER,))
    d = object.__new__(Vnetd)
    d.config = config
    d.core = RelayCore(config.address, seq=1, group=config.group, ports=config.ports)
    d.core.add_peer(PEER)
    d.counts = {}
    relay, inject = StubRelaySocket(), StubRelaySocket()
    d.relay, d.inject = cast(socket.socket, relay), cast(socket.socket, inject)
    d._error_logged = 0.0
    d.wall_ns, d.monotonic = clock.time_ns, clock.monotonic
    return d, relay, inject


def _captured_message(clock: Clock, packet: bytes = PKT, seq: int = 77) -> bytes:
    return build_relay(RelayMessage(RelayOp.PACKET, ipaddress.IPv4Address(PEER), seq, 0, 1, clock.time_ns(), packet),
                       KEY)


@pytest.mark.adversarial
@pytest.mark.parametrize("later", [10.0, 31.0, 59.0])
def test_r23_vnetd_replay_at_plus_31_s_is_refused(later: float, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    d, relay, inject = _vnetd(clock, monkeypatch)
    wire = _captured_message(clock)
    relay.inbox.append(wire)
    d.on_relay()
    assert len(inject.sent) == 1
    clock.t += later
    relay.inbox.append(wire)  # the same bytes, replayed by someone on the path
    d.on_relay()
    assert len(inject.sent) == 1, f"replay at +{later:.0f} s injected again"


@pytest.mark.adversarial
def test_r23_injected_packets_go_to_the_group_only(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    d, relay, inject = _vnetd(clock, monkeypatch)
    relay.inbox += [_captured_message(clock, udp_to_group(b"x", dst="10.0.0.9"), 1),
                      _captured_message(clock, udp_to_group(b"x", dport=53), 2),
                      _captured_message(clock, PKT, 3)]
    d.on_relay()
    assert inject.sent == [(PKT, ("224.10.0.1", 0))]
    assert d.core.counts["not_relayable"] == 2


def test_one_input_that_raises_does_not_end_the_relay_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    d, relay, _ = _vnetd(clock, monkeypatch)

    def boom(*args: Any, **kwargs: Any) -> list[Any]:
        raise IndexError("a bug somewhere")

    monkeypatch.setattr(d.core, "relayed", boom)
    relay.inbox += [_captured_message(clock, PKT, 1), _captured_message(clock, PKT, 2)]
    d.on_relay()
    assert d.counts["error_IndexError"] == 2 and relay.inbox == []
