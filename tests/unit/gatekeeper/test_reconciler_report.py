"""The gatekeeper's side of the contract: the report it builds passes the manager's check by
construction (even from records that would break it), it says its contract version, and a desired
state that breaks the contract is not applied but reported."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gatekeeper.reconciler import Reconciler
from softudc.manager.reports import report_problems
from softudc.model.hoststate import CONTRACT_VERSION, MAX_TEXT, HostReport, parse

UNDERLAY = "192.0.2.1"


class FakeLink:
    """The manager as the reconciler sees it: records what it is sent, answers GETs from a list."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None, wait: float = 0.0) -> Any:
        self.sent.append((method, path, body))
        return self.answers.pop(0) if method == "GET" else {"stored": True}


def _vnets(healthy: bool = True) -> Any:
    workers = {"fwd-udp": "running" if healthy else "dead"}
    forwarder = SimpleNamespace(vnets={5: object(), 7: object()},
                                health=lambda: {"workers": workers, "restarts": 2, "healthy": healthy})
    made: list[int] = []
    asked: list[dict[str, Any]] = []

    def create_vnet(vnet: int, **kw: Any) -> None:
        made.append(vnet)
        asked.append(kw)

    return SimpleNamespace(forwarder=forwarder, config=SimpleNamespace(underlay_address=UNDERLAY),
                           list_vnets=lambda: [{"vnet": v, "ports": []} for v in made], made=made, asked=asked,
                           create_vnet=create_vnet)


def _reconciler(answers: list[Any] | None = None, healthy: bool = True) -> tuple[Reconciler, FakeLink]:
    link = FakeLink(answers or [])
    return Reconciler(link, "h1", _vnets(healthy), None, 4, 4096,  # type: ignore[arg-type]
                      migration_uri="qemu+tcp://192.0.2.1/system"), link


def test_the_report_of_a_host_with_everything_going_on_follows_the_contract() -> None:
    r, _ = _reconciler(healthy=False)
    moves = r.migrations
    moves.outgoing = {"demo--web-0": {"attempt": "a1", "to": "h2", "state": "failed", "started": 1.5, "ended": 9.0,
                                      "error": "libvirt: " + "x" * 5000, "wall_ms": None, "step": "internal"},
                      "demo--web-1": {"attempt": "a2", "to": "h2", "state": "completed", "wall_ms": 1234}}
    moves.arrivals = {"demo--db-0": {"downtime_ms": 40, "total_ms": None, "data_total": 7},
                      "demo--db-1": {"error": "no record: " + "y" * 3000}}
    moves.departed = {"demo--web-1": {"attempt": "a2", "to": "h2", "ended": 0.0},
                      "demo--web-2": {"attempt": "local-5", "to": None, "ended": 0.0}}
    r.errors = [f"vm.start demo--x-{i}: " + "z" * 3000 for i in range(9)]
    r.notes = ["kept"]
    domains = [{"name": "demo--web-0", "state": "running", "vcpus": 1, "memory_mib": 128},
               {"name": "demo--db-0", "state": "paused", "vcpus": 0, "memory_mib": None},
               {"name": "someone-elses", "state": "running", "vcpus": 2, "memory_mib": 256},
               {"name": "a--" + "b" * 300, "state": "running", "vcpus": 1, "memory_mib": 1}]
    report = r.report(domains)
    assert report_problems(report) == []  # what the manager checks
    assert report["contract"] == CONTRACT_VERSION and report["state"] == "degraded"
    assert report["running"] == ["demo--web-0"] and set(report["sizes"]) == {"demo--web-0", "demo--db-0"}
    assert report["sizes"]["demo--db-0"] == [None, None]  # a size libvirt did not say is unknown, not 0
    assert len(report["errors"]) == 5 and all(len(e) == MAX_TEXT for e in report["errors"])
    assert report["migrations"]["demo--web-0"]["error"].endswith("...")
    assert "step" not in report["migrations"]["demo--web-0"] and "wall_ms" not in report["migrations"]["demo--web-0"]
    assert report["arrivals"]["demo--db-0"] == {"downtime_ms": 40, "data_total": 7}
    assert report["departed"]["demo--web-2"] == {"attempt": "local-5", "ago_s": report["departed"]["demo--web-2"]
                                                 ["ago_s"]}  # no destination known: left out, not null
    assert report["underlay"] == UNDERLAY and report["vnets"] == [5, 7]


def test_a_quiet_host_reports_its_capacity_in_this_contract_version() -> None:
    r, _ = _reconciler()
    report = r.report([])
    assert parse(HostReport, report).contract == CONTRACT_VERSION
    assert report["vcpus"] == 4 and report["memory_mib"] == 4096 and report["state"] == "ready"


def test_sync_sends_the_report_and_applies_a_desired_state_that_follows_the_contract() -> None:
    keys = {"send_epoch": 3, "secrets": {"3": "ab" * 32}}
    desired = {"contract": 2, "etag": "e1", "vms": [],
               "vnets": [{"id": 5, "farm": "demo", "name": "front", "security": "none", "mtu": None},
                         {"id": 7, "farm": "demo", "name": "back", "security": "auth", "mtu": 1400, "keys": keys,
                          "members": [UNDERLAY, "192.0.2.2"]}]}
    r, link = _reconciler([desired])
    assert r.sync() == ["vnet.create 5", "vnet.create 7"]
    assert r.vnets.asked == [  # type: ignore[attr-defined]  # what the VNET service was asked for
        {"security": None, "keys": None, "mtu": None, "members": None},
        {"security": "auth", "keys": keys, "mtu": 1400, "members": [UNDERLAY, "192.0.2.2"]}]
    method, path, body = link.sent[0]
    assert (method, path) == ("PUT", "/v1/hosts/h1/status") and body["contract"] == CONTRACT_VERSION
    assert r.state.vnets[0].id == 5 and r.desired["etag"] == "e1"


@pytest.mark.adversarial
@pytest.mark.parametrize(("answer", "said"), [
    ({"etag": "e2", "vms": [{"name": "demo--web-0", "vcpus": "1", "memory_mib": 128}], "vnets": [{"id": 5}]},
     "vms.0.vcpus: '1', expected int"),
    ({"etag": "e2", "vnets": [{"id": 5, "handover": True}]}, "vnets.0.handover: unknown field"),
    ({"contract": CONTRACT_VERSION + 1, "etag": "e2", "vnets": [{"id": 5}]}, "upgrade this gatekeeper"),
])
def test_a_desired_state_that_breaks_the_contract_is_not_applied_and_the_next_report_says_why(
        answer: dict[str, Any], said: str) -> None:
    r, _ = _reconciler([answer])
    assert r.sync() == []
    assert r.vnets.made == []  # type: ignore[attr-defined]  # nothing applied, not even the VNET that was fine
    assert r.desired.get("etag") == "e2"  # the next long poll waits for a change rather than this again
    report = r.report([])
    assert report_problems(report) == []
    assert len(report["errors"]) == 1 and "desired state refused, nothing applied" in report["errors"][0]
    assert said in report["errors"][0] and "upgrade this gatekeeper" in report["errors"][0]


def test_a_host_with_the_storage_service_reports_its_pool_and_a_failing_pool_does_not_stop_the_report() -> None:
    r, _ = _reconciler()
    assert "pool" not in r.report([])  # no storage service here
    r.pool = lambda: {"capacity_bytes": 100 << 30, "free_bytes": 60 << 30}
    report = r.report([])
    assert report_problems(report) == [] and report["pool"] == {"capacity_bytes": 100 << 30, "free_bytes": 60 << 30}

    def unreadable() -> dict[str, int]:
        raise OSError("the pool's disk is gone")

    r.pool = unreadable
    report = r.report([])
    assert "pool" not in report and report["state"] == "ready" and report_problems(report) == []


def test_a_host_busy_converging_still_reports_and_an_idle_one_is_left_to_its_rounds() -> None:
    """A VNET (or VM) that takes long to make: heartbeats report the host meanwhile, so the manager
    does not judge a healthy host down (and fence it) for its slowness. A heartbeat repeats the last
    report and reads nothing (libvirt holds its listings while it starts a domain)."""
    desired = {"contract": CONTRACT_VERSION, "etag": "e1", "vms": [],
               "vnets": [{"id": 5, "farm": "demo", "name": "front", "security": "none", "mtu": None}]}
    r, link = _reconciler([desired])
    assert r.heartbeat(period=0.0) is False  # between rounds: the round itself reports
    beats: list[bool] = []
    slow = r.vnets.create_vnet

    def held(vms_here: list[dict[str, Any]]) -> dict[str, Any]:
        raise AssertionError("a heartbeat built a report: it would wait on libvirt")

    def create_vnet(vnet: int, **kw: Any) -> None:  # while it runs, the heartbeat thread's turn
        r.report = held  # type: ignore[method-assign]
        beats.append(r.heartbeat(period=0.0))
        beats.append(r.heartbeat(period=3600.0))  # reported just now: not again before the period
        slow(vnet, **kw)

    r.vnets.create_vnet = create_vnet  # type: ignore[method-assign, assignment]
    assert r.sync() == ["vnet.create 5"]
    assert beats == [True, False]
    puts = [body for method, _, body in link.sent if method == "PUT"]
    assert len(puts) == 2 and puts[1] == puts[0] and report_problems(puts[1]) == []
    assert r.heartbeat(period=0.0) is False  # the round over
