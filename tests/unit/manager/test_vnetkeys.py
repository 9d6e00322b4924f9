"""VNET keys as the manager issues them: one record per (farm, VNET) incarnation with the farm in
the derivation (R7), rotation in overlapping steps, every VNET keyed (VARP, R18), member lists."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.manager import vnetkeys
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager, init

ROOT = Path(__file__).parents[3]
DEMO = (ROOT / "configs" / "farms" / "demo.yaml").read_text()
ADMIN = Principal("root", "admin")
HOSTS = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "192.0.2.3"}


@pytest.fixture
def m(tmp_path: Path) -> Manager:
    init(tmp_path, ["127.0.0.1"])
    manager = Manager(tmp_path)
    manager.key_rotation_every_s = None
    return manager


def report_all(m: Manager, underlay: bool = True) -> None:
    for h, addr in HOSTS.items():
        body: dict[str, Any] = {"vcpus": 8, "memory_mib": 8192}
        if underlay:
            body["underlay"] = addr
        if m.store.get("host", h) is None:
            m.store.put("host", h, {"joined": time.time()})  # as a join leaves it (the PKI is not the point here)
        m.store.set_status("host", h, {**body, "reported": time.time()})
    m.reconcile()


def vnets_of(m: Manager, host: str) -> dict[str, dict[str, Any]]:
    m.reconcile()  # a pass of the controllers: it makes the keys and moves rotations on (serving does not)
    return {v["name"]: v for v in m._desired(host)["vnets"]}


def db_host(m: Manager) -> str:
    return next(h for h in HOSTS if "back" in vnets_of(m, h))


def test_every_vnet_has_keys_and_the_secured_one_its_level(m: Manager) -> None:
    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    have = vnets_of(m, db_host(m))
    assert have["back"]["security"] == "conf" and have["back"]["keys"]["send_epoch"] >= 1
    front = next(vnets_of(m, h)["front"] for h in HOSTS if "front" in vnets_of(m, h))
    assert front["security"] == "none" and front["keys"]["secrets"]  # VARP is signed on `none` VNETs too


def test_r7_a_farm_deleted_and_made_again_gets_new_secrets_and_epochs(m: Manager) -> None:
    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    before = vnets_of(m, db_host(m))["back"]["keys"]
    m.delete_farm(ADMIN, "demo")
    assert not m.store.objects("vnetkey")
    m.put_farm(ADMIN, "demo", DEMO, None)
    after = vnets_of(m, db_host(m))["back"]["keys"]
    assert after["send_epoch"] != before["send_epoch"]
    assert not set(after["secrets"].values()) & set(before["secrets"].values())


def test_r7_the_farm_identity_is_part_of_the_secret_hosts_get() -> None:
    record = vnetkeys.new_record(0.0, 7)
    a = vnetkeys.for_hosts(record, "a", "v")["secrets"]["7"]
    b = vnetkeys.for_hosts(record, "b", "v")["secrets"]["7"]
    other = vnetkeys.for_hosts({**record, "incarnation": "00"}, "a", "v")["secrets"]["7"]
    assert len({a, b, other}) == 3 and record["epochs"]["7"]["secret"] not in (a, b)


def test_a_rotation_adds_then_sends_then_retires(m: Manager) -> None:
    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    host = db_host(m)
    old = vnets_of(m, host)["back"]["keys"]
    now = 1_000_000.0
    with mock.patch("time.time", return_value=now):
        assert m.rotate_vnet_keys("demo", "back") == ["back"]
        adding = vnets_of(m, host)["back"]["keys"]
        with pytest.raises(ApiError, match="in progress"):
            m.rotate_vnet_keys("demo", "back")
    assert adding["send_epoch"] == old["send_epoch"] and len(adding["secrets"]) == 2
    new_epoch = next(e for e in adding["secrets"] if e != str(old["send_epoch"]))
    with mock.patch("time.time", return_value=now + m.key_rotation_step_s):
        sending = vnets_of(m, host)["back"]["keys"]
    assert sending["send_epoch"] == int(new_epoch) and sending["secrets"] == adding["secrets"]
    with mock.patch("time.time", return_value=now + 2 * m.key_rotation_step_s + 1):
        done = vnets_of(m, host)["back"]["keys"]
    assert done == {"send_epoch": int(new_epoch), "secrets": {new_epoch: adding["secrets"][new_epoch]}}
    assert any(e["type"] == "KeysRotated" for e in m.store.events("farm", "demo"))


def test_a_scheduled_rotation_starts_when_the_send_epoch_is_old(m: Manager) -> None:
    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    host = db_host(m)
    first = vnets_of(m, host)["back"]["keys"]
    m.key_rotation_every_s = 3600.0
    with mock.patch("time.time", return_value=time.time() + 3601):
        assert len(vnets_of(m, host)["back"]["keys"]["secrets"]) == 2
    assert first["send_epoch"] == vnets_of(m, host)["back"]["keys"]["send_epoch"]  # step 1 only: still sends old


def test_rotating_an_unknown_vnet_says_what_to_do(m: Manager) -> None:
    with pytest.raises(ApiError, match="no VNET"):
        m.rotate_vnet_keys("demo", "back")


def test_r18_each_vnet_lists_its_member_hosts_underlay_addresses(m: Manager) -> None:
    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    status = m.store.get("farm", "demo")
    assert status is not None
    hosts_on = {v: sorted({i["host"] for i in status.status["instances"] if i["vm"] == vm})
                for v, vm in (("front", "web"), ("back", "db"))}
    for h in HOSTS:
        for name, v in vnets_of(m, h).items():
            assert v["members"] == sorted(HOSTS[x] for x in hosts_on[name])
            assert "member_hosts" not in v


def test_r18_members_are_left_out_while_an_address_is_unknown(m: Manager) -> None:
    report_all(m, underlay=False)
    m.put_farm(ADMIN, "demo", DEMO, None)
    assert all("members" not in v for h in HOSTS for v in vnets_of(m, h).values())


def test_a_rotation_step_reaches_the_hosts_through_converge(m: Manager) -> None:
    """R21 end to end on paper: the desired keys differ from what a host holds -> vnet.update."""
    from gatekeeper.converge import Here, converge, wanted_fingerprint

    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    host = db_host(m)
    desired = m._desired(host)
    back = next(v for v in desired["vnets"] if v["name"] == "back")
    info = {v["id"]: {"security": v["security"], "mtu": v["mtu"], "members": [a for a in v["members"]
                                                                            if a != HOSTS[host]],
                      "key_fingerprint": wanted_fingerprint(v["security"], v["keys"])} for v in desired["vnets"]}
    here = Here(list(info), [], set(info), vnet_info=info, underlay=HOSTS[host])
    assert not [a for a in converge(desired, here) if a.op.startswith("vnet.")]
    m.rotate_vnet_keys("demo", "back")
    ops = [(a.op, a.args["vnet"]) for a in converge(m._desired(host), here) if a.op.startswith("vnet.")]
    assert ops == [("vnet.update", back["id"])]


def test_r18_a_host_that_carries_the_vnet_without_an_instance_is_a_member_too(m: Manager) -> None:
    """An admin's port kept a VNET on a host whose instance left: its traffic must still pass."""
    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    host = db_host(m)
    back = vnets_of(m, host)["back"]
    other = next(h for h in HOSTS if h != host)
    assert HOSTS[other] not in back["members"]
    m.store.set_status("host", other, {"vcpus": 8, "memory_mib": 8192, "underlay": HOSTS[other],
                                       "vnets": [back["id"]], "reported": time.time()})
    assert HOSTS[other] in vnets_of(m, host)["back"]["members"]


@pytest.mark.adversarial
def test_r18_a_bogus_underlay_address_in_a_report_breaks_nothing(m: Manager) -> None:
    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    host = db_host(m)
    m.store.set_status("host", host, {"vcpus": 8, "memory_mib": 8192, "underlay": "not-an-address",
                                      "reported": time.time()})
    assert all("members" not in v for v in vnets_of(m, host).values())  # unknown: the hosts' own lists


def test_a_key_record_from_before_this_format_keeps_its_secret_until_rotated(m: Manager) -> None:
    report_all(m)
    m.put_farm(ADMIN, "demo", DEMO, None)
    host = db_host(m)
    back = vnets_of(m, host)["back"]
    for o in m.store.objects("vnetkey"):  # as the manager of commit f836a52 stored them
        m.store.put("vnetkey", o.name, {"send_epoch": 1, "secrets": {"1": "ab" * 32}})
    m.store.put("keyepoch", "counter", {"last": 0})  # and no counter yet: its next epoch would be 1
    assert vnets_of(m, host)["back"]["keys"] == {"send_epoch": 1, "secrets": {"1": "ab" * 32}}
    m.rotate_vnet_keys("demo", "back")
    rotating = vnets_of(m, host)["back"]["keys"]
    assert rotating["secrets"]["1"] == "ab" * 32 and len(rotating["secrets"]) == 2  # epoch 1 not reused
    assert back["id"] == vnets_of(m, host)["back"]["id"]


def test_the_epoch_counter_wraps_around_the_live_epochs() -> None:
    assert vnetkeys.next_epoch(65535) == 1
    assert vnetkeys.next_epoch(65534, {65535, 1}) == 2
    assert vnetkeys.next_epoch(3, {4}) == 5


def test_an_operator_rotates_a_farms_keys_over_https(tmp_path: Path) -> None:
    from softudc.manager.auth import TokenStore
    from softudc.manager.daemon import serve
    from tests.unit.manager.test_api import Api

    admin = init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    server = serve(m, "127.0.0.1", 0)
    try:
        api = Api(tmp_path, server.server_address[1])
        report_all(m)
        assert api.call("PUT", "/v1/farms/demo", DEMO, admin, {"Content-Type": "application/yaml"})[0] == 200
        before = {h: vnets_of(m, h) for h in HOSTS}  # the hosts fetched: keys exist
        tokens = TokenStore(tmp_path / "tokens.json")
        viewer, operator = tokens.create("v", "viewer", ["demo"]), tokens.create("o", "operator", ["demo"])
        path = "/v1/farms/demo/keys/rotate"
        assert api.call("POST", path, {}, viewer)[0] == 403
        assert api.call("POST", "/v1/farms/nope/keys/rotate", {}, operator)[0] == 404
        assert api.call("POST", path, {"vnet": 3}, operator)[0] == 400
        status, body = api.call("POST", path, {"vnet": "back"}, operator)
        assert status == 200 and body["rotating"] == ["back"]
        assert api.call("POST", path, {"vnet": "back"}, operator)[0] == 409  # one rotation at a time
        status, body = api.call("POST", path, {}, operator)  # all: the one in progress goes on
        assert status == 200 and body["rotating"] == ["front"]
        host = db_host(m)
        assert len(vnets_of(m, host)["back"]["keys"]["secrets"]) == 2 > len(before[host]["back"]["keys"]["secrets"])
        assert "KeysRotating" in [e["type"] for e in m.store.events("farm", "demo")]
    finally:
        server.shutdown()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 200), st.booleans()), min_size=1, max_size=40))
def test_two_hosts_a_step_apart_always_understand_each_other(steps: list[tuple[float, bool]]) -> None:
    """Whatever the timing of fetches and on-demand rotations: a host that fetched less than
    `step` seconds after another can always open what the other sends, and the other its packets."""
    step, every, now, counter = 60.0, 300.0, 0.0, 1
    record = vnetkeys.new_record(now, 1)
    seen: list[tuple[float, int, set[int]]] = []  # (time, send epoch, epochs) as hosts fetched them
    for dt, rotate in steps:
        now += dt
        if rotate and "rotation" not in record:
            counter = vnetkeys.next_epoch(counter, vnetkeys.live_epochs(record))
            record = vnetkeys.start_rotation(record, now, counter)
        if vnetkeys.due(record, now, every):  # as Manager._vnet_keys does on every fetch
            counter = vnetkeys.next_epoch(counter, vnetkeys.live_epochs(record))
            record = vnetkeys.start_rotation(record, now, counter)
        record = vnetkeys.advance(record, now, step)
        send, epochs = record["send_epoch"], vnetkeys.live_epochs(record)
        assert send in epochs and len(epochs) <= 2
        for t, other_send, other_epochs in seen:
            if now - t < step:
                assert other_send in epochs and send in other_epochs
        seen.append((now, send, epochs))
