"""The forwarder's threads under hostile input and bugs: the TAP loop guard (audit R4), the
supervisor that restarts a dead worker (R2), and what health and metrics say about it. A real
`Forwarder` on loopback (ephemeral ports); a TAP is one end of an AF_UNIX socketpair."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from gatekeeper.metrics import GatekeeperCollector
from gatekeeper.vnet.forwarder import Forwarder
from gatekeeper.vnet.offload import GSO_TCPV4
from gatekeeper.vnet.port import VnetPort
from gatekeeper.vnet.supervisor import Supervisor
from tests.unit.gatekeeper.vnet.dataplane_fakes import MAC_B, FakeControl, tcp_frame


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def fast_supervisor() -> Supervisor:
    return Supervisor(min_backoff=0.02, max_backoff=0.1, period=0.01)


@pytest.fixture
def fwd() -> Iterator[Forwarder]:
    f = Forwarder(local_addr="127.0.0.1", group="224.10.0.1", flood="unicast", fdb={}, stale=set(), seen={},
                  local_macs=set(), control=FakeControl(), port=0, esp_port=0)
    f.port = f._udp.getsockname()[1]  # frames to 127.0.0.1 come back to this forwarder
    f.supervisor = fast_supervisor()
    yield f
    f.stop()


def plug_tap(fwd: Forwarder, vnet: int, offload: bool = True) -> tuple[VnetPort, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    port = VnetPort(vnet, ours.detach(), "udp", 1450, (), offload)
    fwd.add_vnet(port)
    return port, theirs


def gso_frame(data_offset: int) -> bytes:
    """What a TAP with IFF_VNET_HDR hands over for a TCPv4 super-frame (audit R4's shape)."""
    frame = tcp_frame(1000, data_offset=data_offset, payload=4000)
    return struct.pack("<BBHHHH", 1, GSO_TCPV4, 54, 1400, 34, 16) + frame


def plain_frame(seq: int) -> bytes:
    return bytes(10) + tcp_frame(seq, payload=100)


# --- R4: the TAP loop ------------------------------------------------------------------------

@pytest.mark.adversarial
@pytest.mark.parametrize("data_offset", [0, 2, 3])
def test_r4_tap_loop_survives_a_gso_frame_with_a_short_tcp_header(fwd: Forwarder, data_offset: int) -> None:
    """segment() raised IndexError for a data offset below 5 and the TAP thread died, so the host
    stopped sending on every VNET. Now it is a counted drop and the next frame leaves."""
    fwd.start()
    port, tap = plug_tap(fwd, 5)
    fwd.fdb[(5, MAC_B)] = "127.0.0.1"
    tap.send(gso_frame(data_offset))
    tap.send(plain_frame(1))
    assert wait_for(lambda: port.stats[0] >= 1), fwd.drops
    assert fwd.drops["tap"]["gso_unsupported"] == 1
    assert fwd.health()["workers"]["fwd-tap"] == "running"
    assert fwd.supervisor.restarts()["fwd-tap"] == 0
    tap.close()


@pytest.mark.adversarial
def test_r4_tap_loop_counts_any_exception_from_one_frame(fwd: Forwarder, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fwd._emit

    def emit(port: VnetPort, mv: memoryview, end: int, targets: tuple[str, ...], drops: object) -> None:
        if bytes(mv[end - 4:end]) == b"BOOM":
            raise ZeroDivisionError("a bug somewhere")
        real(port, mv, end, targets, drops)  # type: ignore[arg-type]

    monkeypatch.setattr(fwd, "_emit", emit)
    fwd.start()
    port, tap = plug_tap(fwd, 5)
    fwd.fdb[(5, MAC_B)] = "127.0.0.1"
    tap.send(plain_frame(1)[:-4] + b"BOOM")
    tap.send(plain_frame(2))
    assert wait_for(lambda: port.stats[0] >= 1)
    assert fwd.drops["tap"]["error_ZeroDivisionError"] == 1
    tap.close()


def test_control_error_is_raised_to_the_caller_and_the_tap_loop_carries_on(fwd: Forwarder) -> None:
    """A registration that fails on the TAP thread (a closed fd) is the caller's error, at once,
    not a dead TAP thread and a 5 s timeout."""
    fwd.start()
    with pytest.raises(RuntimeError, match="could not add vnet 9"):
        fwd.add_vnet(VnetPort(9, 999_999, "udp", 1450))
    _port, tap = plug_tap(fwd, 5)
    assert fwd.vnets.keys() == {5} and fwd.health()["workers"]["fwd-tap"] == "running"
    tap.close()


# --- the supervisor --------------------------------------------------------------------------

@pytest.mark.adversarial
def test_r2_a_dead_udp_worker_is_restarted_and_receives_again(fwd: Forwarder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's "nothing restarts it and nothing reports it": a receive thread that dies (here
    of a bug outside the per-datagram guard) is restarted, counted, and serves traffic again."""
    real = fwd._udp_loop
    calls = []

    def dies_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug outside the per-datagram guard")
        real()

    monkeypatch.setattr(fwd, "_udp_loop", dies_once)
    fwd.start()
    assert wait_for(lambda: fwd.supervisor.restarts().get("fwd-udp") == 1)
    assert wait_for(lambda: fwd.health()["healthy"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x07 not a SoftUDC message", ("127.0.0.1", fwd.port))
        assert wait_for(lambda: fwd.drops["udp"]["bad_message"] == 1)
    assert fwd.health() == {"workers": {"fwd-tap": "running", "fwd-udp": "running"}, "restarts": 1,
                            "healthy": True}


def test_r2_metrics_show_restarts_and_worker_state(fwd: Forwarder, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def dies_until_released() -> None:
        if not release.is_set():
            raise RuntimeError("dead")
        while not fwd._stopping:
            time.sleep(0.01)

    monkeypatch.setattr(fwd, "_udp_loop", dies_until_released)
    fwd.start()
    assert wait_for(lambda: fwd.supervisor.restarts()["fwd-udp"] >= 2)
    assert fwd.health()["healthy"] is False
    release.set()
    assert wait_for(lambda: fwd.health()["healthy"])
    service = SimpleNamespace(config=SimpleNamespace(host="h1"), forwarder=fwd, varp_counts={},
                              varp_entries=lambda: [])
    samples = {(m.name, s.labels.get("worker")): s.value
               for m in GatekeeperCollector(service).collect()  # type: ignore[arg-type]
               for s in m.samples}
    assert samples[("softudc_gatekeeper_worker_restarts", "fwd-udp")] >= 2
    assert samples[("softudc_gatekeeper_worker_up", "fwd-udp")] == 1
    assert samples[("softudc_gatekeeper_worker_up", "fwd-tap")] == 1


def test_supervisor_backs_off_between_restarts_and_resets_after_a_stable_run() -> None:
    now = [100.0]
    sup = Supervisor(clock=lambda: now[0], min_backoff=0.5, max_backoff=2.0, stable_after=60.0)
    sup.add("w", lambda: None)  # returns at once: a death every time
    w = sup.workers["w"]

    def dead() -> None:
        assert w.thread is not None
        w.thread.join(2)

    dead()
    delays = []
    for _ in range(4):
        assert sup.check() == []  # the death is noted; the restart waits for its backoff
        assert w.restart_at is not None
        delays.append(w.restart_at - now[0])
        now[0] = w.restart_at - 0.01
        assert sup.check() == []
        now[0] = w.restart_at
        assert sup.check() == ["w"]
        dead()
    assert delays == [0.5, 1.0, 2.0, 2.0]
    now[0] += 61  # ran long enough: the next death is retried quickly again
    sup.check()
    assert w.restart_at == pytest.approx(now[0] + 0.5)
    assert w.restarts == 4
    assert w.last_error == "returned before stop"


def test_health_says_dead_when_nothing_will_restart_the_worker() -> None:
    sup = Supervisor()
    sup.add("w", lambda: None)
    thread = sup.workers["w"].thread
    assert thread is not None
    thread.join(2)
    assert sup.health() == {"workers": {"w": "dead"}, "restarts": 0, "healthy": False}  # no watcher running
    sup.start()
    assert sup.health()["workers"] == {"w": "restarting"}
    sup.stop()
    assert sup.health()["workers"] == {"w": "dead"}


def test_r2_host_report_is_degraded_while_a_worker_is_down(fwd: Forwarder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit: the gatekeeper kept reporting `ready` with a dead receive thread. Now the report
    says `degraded` and which worker, in a shape the manager accepts."""
    from gatekeeper.migrations import Migrations
    from gatekeeper.reconciler import Reconciler
    from softudc.manager.reports import report_problems
    from softudc.model.hoststate import DesiredState

    monkeypatch.setattr(fwd, "_udp_loop", lambda: None)  # ends at once, again and again
    fwd.supervisor.halt()  # and nothing restarts it
    fwd.start()
    client: Any = object.__new__(Reconciler)
    client.__dict__.update(capacity={"vcpus": 2, "memory_mib": 1024}, migrations=Migrations(None),
                           vms=None, errors=[], notes=[], desired={}, state=DesiredState(),
                           vnets=SimpleNamespace(forwarder=fwd, list_vnets=lambda: []))
    assert wait_for(lambda: fwd.health()["workers"]["fwd-udp"] == "dead")
    report = client.report([])
    assert report["state"] == "degraded"
    assert report["dataplane"]["workers"]["fwd-udp"] == "dead" and report["dataplane"]["healthy"] is False
    assert report_problems(report) == []
