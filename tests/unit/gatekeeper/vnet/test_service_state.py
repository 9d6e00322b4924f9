"""The VNET service's state file and its keyed-VARP replay cache, without sockets: a corrupt state
file is kept aside and the gatekeeper starts empty (audit R22); the replay cache is pruned by
time at the cost of what it removes, and bounded (audit R28)."""

from __future__ import annotations

import json
import logging
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gatekeeper.config import GatekeeperConfig
from gatekeeper.reconciler import Reconciler
from gatekeeper.vnet import service as service_module
from gatekeeper.vnet import varp_auth as varp_auth_module
from gatekeeper.vnet.esp_sa import SecurityAssociations
from gatekeeper.vnet.service import VnetService
from softudc.security.keys import VnetKeys
from softudc.wire import VarpOp, parse_varp

VNET = 5
MAC = bytes.fromhex("020000000001")


class Clock:
    def __init__(self) -> None:
        self.ns = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.ns


class FakeForwarder:
    """What the service's state and VARP code use of the forwarder; the real one opens sockets."""

    def __init__(self, *, local_addr: str, **_: Any) -> None:
        self.vnets: dict[int, Any] = {}
        self.sas = SecurityAssociations(local_addr)


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "Forwarder", FakeForwarder)


def _service(tmp: Path, address: str = "10.0.0.2", wall: Clock | None = None) -> VnetService:
    config = GatekeeperConfig(host="h", api_socket=str(tmp / "api.sock"), underlay_interface="eth0",
                              underlay_address=address)
    devices: Any = None  # nothing here touches a device
    return VnetService(config, devices, time.monotonic, tmp / "state.json", wall or Clock())


@pytest.mark.parametrize("content", [b"", b'{"vnets": [{"vnet": 5, "trans', b"\xff\xfe garbage", b"[1, 2]",
                                     b'{"vnets": 7}'])
def test_r22_a_corrupt_state_file_is_moved_aside_and_the_gatekeeper_starts_empty(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    (tmp_path / "state.json").write_bytes(content)
    svc = _service(tmp_path)
    with caplog.at_level(logging.WARNING, logger="gatekeeper.vnet"):
        svc._restore()  # raised JSONDecodeError before: the gatekeeper crash-looped
    assert svc.forwarder.vnets == {}
    kept = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == content  # kept for a human, byte for byte
    assert not (tmp_path / "state.json").exists()
    assert str(kept[0]) in caplog.text and "corrupt" in caplog.text


def test_r22_the_state_file_is_written_whole_0600_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    svc._save()
    path = tmp_path / "state.json"
    assert json.loads(path.read_text()) == {"vnets": [], "ports": []}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name != "state.json"] == []


def test_r22_a_corrupt_managed_vnets_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "managed.json"
    state.write_bytes(b'{"managed_vnets": [2, ')
    client = object.__new__(Reconciler)
    client.state_file = state
    with caplog.at_level(logging.WARNING, logger="gatekeeper.manager"):
        assert client._load_managed() == set()
    assert [p.read_bytes() for p in tmp_path.glob("managed.json.corrupt-*")] == [b'{"managed_vnets": [2, ']
    client.managed_vnets = {3, 2}
    client._save_managed()
    assert json.loads(state.read_text()) == {"managed_vnets": [2, 3]}
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


def _keyed_pair(tmp: Path) -> tuple[VnetService, VnetService, Clock]:
    clock = Clock()
    keys = VnetKeys("auth", {1: bytes(range(32))}, 1)
    sender = _service(tmp / "a", "10.0.0.1", clock)
    receiver = _service(tmp / "b", "10.0.0.2", clock)
    for svc in (sender, receiver):
        svc.forwarder.sas.set_keys(VNET, keys)
    return sender, receiver, clock


@pytest.mark.adversarial
def test_r28_varp_replay_cache_is_pruned_by_time_and_still_refuses_every_replay(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sender, receiver, clock = _keyed_pair(tmp_path)
    window_ns = int(receiver.config.varp_auth_window * 1e9)
    sent = []
    for _ in range(6000):  # more than the 4,096 after which every message rebuilt the whole dict
        clock.ns += 10**7  # 10 ms apart: 60 s in all, twice the window
        buf = sender.varp_auth.message(VarpOp.ANNOUNCE, VNET, MAC)
        assert receiver.varp_auth.refused(parse_varp(buf), buf) is None
        sent.append(buf)
    # Only what is still inside the window is remembered, and it is a deque pruned from the left.
    assert len(receiver.varp_auth.seen) == len(receiver.varp_auth.seen_order) <= window_ns // 10**7 + 1
    fresh, old = sent[-1], sent[0]
    assert receiver.varp_auth.refused(parse_varp(fresh), fresh) == "replayed"
    assert receiver.varp_auth.refused(parse_varp(old), old) == "stale"


@pytest.mark.adversarial
def test_r28_varp_replay_cache_is_bounded_and_refuses_rather_than_forgets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(varp_auth_module, "MAX_VARP_SEEN", 100)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sender, receiver, clock = _keyed_pair(tmp_path)
    verdicts = []
    for _ in range(150):  # all within one second: nothing is old enough to prune
        clock.ns += 1000
        buf = sender.varp_auth.message(VarpOp.ANNOUNCE, VNET, MAC)
        verdicts.append(receiver.varp_auth.refused(parse_varp(buf), buf))
    assert verdicts.count(None) == 100 and verdicts.count("replay_cache_full") == 50
    assert len(receiver.varp_auth.seen) == 100
    clock.ns += int(receiver.config.varp_auth_window * 1e9) + 10**6  # the window passed: room again
    buf = sender.varp_auth.message(VarpOp.ANNOUNCE, VNET, MAC)
    assert receiver.varp_auth.refused(parse_varp(buf), buf) is None
    assert len(receiver.varp_auth.seen) == 1


@pytest.mark.adversarial
def test_r22_entries_of_a_parseable_but_damaged_state_file_are_skipped_one_by_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = {"vnets": [{"transport": "udp"}, {"vnet": "x", "transport": "udp", "members": []}, 7],
             "ports": [{"vnet": 5}, "eth0"]}
    (tmp_path / "state.json").write_text(json.dumps(state))
    svc = _service(tmp_path)
    svc.devices = SimpleNamespace(index=lambda ifname: 1)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="gatekeeper.vnet"):
        svc._restore()  # raised KeyError, ServiceError or TypeError before: the gatekeeper crash-looped
    assert svc.forwarder.vnets == {}
    assert caplog.text.count("skipped the VNET entry") == 3 and caplog.text.count("skipped the port entry") == 2
