"""Host reports at scale (decision 5): a report that says nothing new is a heartbeat, not a write;
what changed, a stale stored report or a migration under way is written as before; the cache it
is compared with follows the store (another manager's write, a re-join) and never hides a change."""

from __future__ import annotations

import time
from typing import Any

import pytest

from softudc.manager.controller import HOST_DOWN_AFTER_S
from softudc.manager.errors import ApiError
from softudc.manager.heartbeats import KIND, heartbeat_times
from softudc.manager.reports import REFRESH_S
from softudc.manager.service import Manager
from tests.unit.manager.conftest import host_writes
from tests.unit.manager.test_loop import FakeStore

REPORT = {"vcpus": 64, "memory_mib": 65536, "running": []}


def test_a_report_with_nothing_new_is_a_heartbeat(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.host_status("h1", "h1", REPORT)
    first = store.get("host", "h1")
    assert first is not None and first.status["vcpus"] == 64
    n = len(store.writes)
    for _ in range(5):
        assert m.host_status("h1", "h1", REPORT) == {"host": "h1", "stored": True}
    assert host_writes(store, n) == []  # no write per report
    m.close_hosts()  # a clean stop writes the book
    seen = heartbeat_times(store.get(KIND, "m1"))["h1"]
    assert seen > first.status["reported"]
    assert m.reports()["h1"]["reported"] == seen  # the host is seen then, by every manager of the group


def test_a_report_that_says_something_new_is_written(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.host_status("h1", "h1", REPORT)
    n = len(store.writes)
    m.host_status("h1", "h1", {**REPORT, "running": ["x--a-0"]})
    m.host_status("h1", "h1", {**REPORT, "running": ["x--a-0"], "errors": ["boom"]})
    m.host_status("h1", "h1", {"vcpus": 64, "memory_mib": 65536})  # a field gone is news too
    assert host_writes(store, n) == ["status"] * 3


def test_a_stored_report_older_than_the_refresh_interval_is_written_again(
        world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    m, store = world
    m.host_status("h1", "h1", REPORT)
    n, now = len(store.writes), time.time()
    monkeypatch.setattr("softudc.manager.hosts.time.time", lambda: now + REFRESH_S + 1)
    m.host_status("h1", "h1", REPORT)
    assert host_writes(store, n) == ["status"]


def test_another_manager_s_write_is_not_hidden_by_the_cache(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.host_status("h1", "h1", REPORT)
    # meanwhile the host reported something else to another manager of the group
    store.set_status("host", "h1", {**REPORT, "running": ["x--a-0"], "reported": time.time()})
    n = len(store.writes)
    m.host_status("h1", "h1", REPORT)  # what this manager's cache had: must still be written
    obj = store.get("host", "h1")
    assert host_writes(store, n) == ["status"] and obj is not None and obj.status["running"] == []


def test_every_report_is_written_while_a_migration_is_under_way(
        world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    m, store = world
    monkeypatch.setattr(m.stored_hosts, "busy", lambda: True)
    m.host_status("h1", "h1", REPORT)
    n = len(store.writes)
    m.host_status("h1", "h1", REPORT)
    m.host_status("h1", "h1", REPORT)
    assert host_writes(store, n) == ["status"] * 2  # a migration's steps count reports (R12)


def test_authentication_follows_the_store(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.authenticate_host("h1", "h1", "f1")
    obj = store.get("host", "h1")
    assert obj is not None
    store.put("host", "h1", {**obj.spec, "certificate": "f2"})  # joined again, through another manager
    with pytest.raises(ApiError, match="superseded"):
        m.authenticate_host("h1", "h1", "f1")
    m.authenticate_host("h1", "h1", "f2")
    store.delete("host", "h1")
    with pytest.raises(ApiError, match="not joined"):
        m.authenticate_host("h1", "h1", "f2")
    with pytest.raises(ApiError, match="never joined"):
        m.host_status("h1", "h1", REPORT)


def test_a_host_silent_too_long_is_down_even_with_old_heartbeats(
        world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    m, _ = world
    m.host_status("h1", "h1", REPORT)
    m.host_status("h1", "h1", REPORT)
    later: Any = time.time() + HOST_DOWN_AFTER_S + 1
    monkeypatch.setattr("softudc.manager.hosts.time.time", lambda: later)
    assert m.reports()["h1"]["state"] == "down"



def test_a_host_its_drain_powered_off_is_silent_on_purpose_not_down(
        world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    m, store = world
    m.host_status("h1", "h1", REPORT)
    stored = store.get("host", "h1")
    assert stored is not None
    store.put("host", "h1", {**stored.spec, "state": "maintenance", "drain": {"total": 0, "power": "off"}})
    later: Any = time.time() + HOST_DOWN_AFTER_S + 1
    monkeypatch.setattr("softudc.manager.hosts.time.time", lambda: later)
    assert m.reports()["h1"]["state"] == "maintenance"  # no SoftUDCHostDown for a host put away

def test_reports_merge_other_managers_heartbeats_as_the_store_holds_them(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.host_status("h1", "h1", REPORT)
    stored = m.reports()["h1"]["reported"]
    later = stored + 5
    store.put(KIND, "m2", {"flushed": later, "hosts": {"h1": later}})  # the host reported to m2 since
    assert m.reports()["h1"]["reported"] == later
    store.put(KIND, "m2", {"flushed": later + 1, "hosts": {}})
    assert m.reports()["h1"]["reported"] == stored  # what the store says now, not what was cached


def _join_csr() -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM).decode())


def test_a_join_with_addresses_binds_them_and_another_host_cannot_take_them(world: tuple[Manager, FakeStore]) -> None:
    from softudc.pki import certificate_addresses

    m, store = world
    joined = m.join({"token": m.ca.create_join_token("h2"), "csr": _join_csr(), "addresses": ["10.100.0.3"]})
    assert certificate_addresses(joined["certificate"].encode()) == ["10.100.0.3"]
    h2 = store.get("host", "h2")
    assert h2 is not None and h2.spec["addresses"] == ["10.100.0.3"]
    with pytest.raises(ApiError, match="belong to host h2") as refused:
        m.join({"token": m.ca.create_join_token("h3"), "csr": _join_csr(), "addresses": ["10.100.0.3"]})
    assert refused.value.status == 403 and store.get("host", "h3") is None
    again = m.join({"token": m.ca.create_join_token("h2"), "csr": _join_csr(), "addresses": ["10.100.0.3"]})
    assert again["host"] == "h2"  # its own address, on a re-join
    with pytest.raises(ApiError, match=r"addresses\[0\]") as bad:
        m.join({"token": "unspent", "csr": _join_csr(), "addresses": ["nope"]})
    assert bad.value.status == 400
