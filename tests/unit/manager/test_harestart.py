"""HA restart with fencing: a down host is fenced before anything of it runs elsewhere; only a
confirmed fence restarts its instances (priority first, `ha: none` left); failures are retried with
backoff, bounded; no power driver: never; the state is in the store, so a new leader resumes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.manager import harestart
from softudc.manager.controller import HOST_DOWN_AFTER_S, inventory, reconcile_farm
from softudc.manager.harestart import (
    KIND,
    MAX_ATTEMPTS,
    HostView,
    after_fence,
    backoff,
    decide,
    relocate,
)
from softudc.manager.service import Manager, init
from softudc.model.farm import validate
from softudc.model.source import DescriptorError
from softudc.power.driver import PowerError, PowerState
from softudc.power.fence import Fenced

FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: f}
spec:
  vnets: [{name: net, subnet: 10.1.0.0/24}]
  vms:
    - {name: low, memory: 1Gi, image: test-guest, nics: [{vnet: net, address: pool}]}
    - {name: high, memory: 1Gi, image: test-guest, priority: 10, nics: [{vnet: net, address: pool}]}
    - {name: keep, memory: 128Mi, image: test-guest, ha: none, nics: [{vnet: net, address: pool}]}
"""


def reports(**states: str) -> dict[str, dict[str, Any]]:
    return {h: {"vcpus": 4, "memory_mib": 1536, "state": s, "running": [], "reported": 1.0} for h, s in states.items()}


def test_descriptor_fields_default_and_are_validated_with_file_and_line() -> None:
    farm = validate(FARM, "f.yaml")
    vms = {v.name: v for v in farm.vms}
    assert (vms["low"].ha, vms["low"].priority) == ("restart", 0)
    assert (vms["high"].priority, vms["keep"].ha) == (10, "none")
    with pytest.raises(DescriptorError) as e:
        validate(FARM.replace("ha: none", "ha: maybe").replace("priority: 10", "priority: 5000"), "f.yaml")
    text = str(e.value)
    assert "f.yaml:8:62:" in text and "spec.vms[1].priority: 5000 must be an integer from -1000 to 1000" in text
    assert "f.yaml:9:58:" in text and "spec.vms[2].ha: 'maybe', expected one of: restart, none" in text


def test_a_down_host_with_power_is_fenced_once_and_one_without_power_never() -> None:
    views = {"h1": HostView("down", True, ("f/a",)), "h2": HostView("down", False, ("f/b",)),
             "h3": HostView("ready", True, ("f/c",)), "h4": HostView("down", True, (), ("f/d",))}
    actions = decide(views, {}, 100.0, "m1")
    assert [(a.kind, a.host) for a in actions if a.kind != "event"] == [
        ("record", "h1"), ("fence", "h1"), ("record", "h2")]
    said = {a.host: a.message for a in actions if a.kind == "event"}
    assert "no power driver configured" in said["h2"] and "fence --force" in said["h2"]
    assert "power-config h2" in said["h2"] and "h4" not in said  # nothing to restart on h4: not fenced
    records = {"h1": {"state": "fencing", "attempts": 1, "since": 100.0}, "h2": {"state": "nopower", "since": 100.0}}
    assert decide(views, records, 110.0, "m2") == []  # under way (another manager's too), and said once
    assert decide(views, records, 110.0, "m1", frozenset({"h1"})) == []


def test_an_unconfirmed_fence_is_retried_with_backoff_then_given_up() -> None:
    view = {"h1": HostView("down", True, ("f/a",))}
    record: dict[str, Any] = {"state": "fencing", "attempts": 1, "since": 0.0}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        record["attempts"] = attempt
        record, type_, message = after_fence("h1", record, Fenced(False, "bmc: password refused", 3.0, 1), 100.0)
        assert type_ == "FenceFailed" and "password refused" in message and "nothing of it is restarted" in message
        assert record["next_try"] == 100.0 + backoff(attempt)
        assert decide(view, {"h1": record}, record["next_try"] - 0.1, "m") == []
        again = decide(view, {"h1": record}, record["next_try"], "m")
        if attempt < MAX_ATTEMPTS:
            assert [a.kind for a in again] == ["record", "fence", "event"]
            assert again[0].spec is not None and again[0].spec["attempts"] == attempt + 1
        else:
            assert again == [] and "given up" in message and "fence --force" in message


def test_a_stale_fencing_record_of_a_dead_manager_is_fenced_again() -> None:
    view = {"h1": HostView("down", True, ("f/a",))}
    record = {"state": "fencing", "attempts": 1, "since": 0.0, "by": "gone"}
    assert decide(view, {"h1": record}, harestart.FENCE_STALE_S - 1, "m") == []
    assert [a.kind for a in decide(view, {"h1": record}, harestart.FENCE_STALE_S + 1, "m")][:2] == ["record", "fence"]


def test_a_fenced_host_stays_fenced_until_it_reports_and_then_the_record_goes() -> None:
    record = {"state": "fenced", "at": 1.0}
    assert decide({"h1": HostView("standby", True, ("f/a",))}, {"h1": record}, 5.0, "m") == []
    assert decide({"h1": HostView("down", True, ("f/a",))}, {"h1": record}, 5.0, "m") == []  # on, not yet back
    back = decide({"h1": HostView("ready", True)}, {"h1": record}, 5.0, "m")
    assert [a.kind for a in back] == ["forget", "event"] and "runs only what is placed on it now" in back[1].message
    assert [a.kind for a in decide({}, {"h1": record}, 5.0, "m")] == ["forget"]


HOST_VIEWS = st.builds(HostView, st.sampled_from(["ready", "down", "standby", "draining"]), st.booleans(),
                       st.lists(st.just("f/a"), max_size=1).map(tuple))
RECORDS = st.one_of(st.none(), st.fixed_dictionaries({
    "state": st.sampled_from(["fencing", "failed", "fenced", "nopower"]), "attempts": st.integers(0, 9),
    "since": st.floats(0, 200), "next_try": st.floats(0, 200)}))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["h1", "h2", "h3"]), st.tuples(HOST_VIEWS, RECORDS)), st.floats(0, 200))
def test_property_a_fence_starts_only_for_a_down_host_with_power_and_something_to_restart(
        world: dict[str, tuple[HostView, dict[str, Any] | None]], now: float) -> None:
    views = {h: v for h, (v, _) in world.items()}
    records = {h: r for h, (_, r) in world.items() if r is not None}
    actions = decide(views, records, now, "m")
    for a in actions:
        if a.kind == "fence":
            v, r = views[a.host], records.get(a.host) or {}
            assert v.state == "down" and v.has_power and v.restart and r.get("state") != "fenced"
            assert int(r.get("attempts", 0)) < MAX_ATTEMPTS or r.get("state") != "failed"
            assert [b.kind for b in actions if b.host == a.host][:2] == ["record", "fence"]  # recorded first
    assert len([a for a in actions if a.kind == "fence"]) == len({a.host for a in actions if a.kind == "fence"})


def test_relocate_restarts_by_priority_keeps_addresses_and_leaves_ha_none() -> None:
    farm = validate(FARM, "f.yaml")
    r = reports(h1="ready", h2="ready")
    status, _, _ = reconcile_farm(farm, {}, inventory(r), {}, r)
    for i in status["instances"]:
        i["host"] = "h1"  # all on h1, which is then fenced; h2 has room for one 1Gi VM only
    r = {"h1": {**r["h1"], "state": "standby", "running": ["f--low-0", "f--high-0", "f--keep-0"]}, "h2": r["h2"]}
    new, _, events = reconcile_farm(farm, status, inventory(r), {}, r, 10.0, frozenset({"h1"}))
    where = {i["name"]: i for i in new["instances"]}
    assert where["high-0"]["host"] == "h2" and where["low-0"]["host"] == "h1" and where["keep-0"]["host"] == "h1"
    before = {i["name"]: i for i in status["instances"]}
    assert where["high-0"]["addresses"] == before["high-0"]["addresses"]
    assert where["high-0"]["macs"] == before["high-0"]["macs"]
    assert "low-0" in new["unplaced"] and new["conditions"]["Placed"] is False
    assert all(i["state"] != "running" for i in new["instances"])  # a fenced host's report is stale
    kinds = [k for k, _ in events]
    assert kinds.count("Restarted") == 1 and kinds.count("NotRestarted") == 1
    _, _, events = reconcile_farm(farm, new, inventory(r), {}, r, 20.0, frozenset({"h1"}))
    assert not [k for k, _ in events if k == "NotRestarted"]  # said once


def test_relocate_leaves_an_instance_running_on_a_live_host_or_migrating() -> None:
    farm = validate(FARM, "f.yaml")
    r = reports(h1="standby", h2="ready")
    status, _, _ = reconcile_farm(farm, {}, inventory(reports(h1="ready")), {}, reports(h1="ready"))
    from softudc.manager.planner import Instance
    current = [Instance(i["name"], i["vm"], "h1", i["addresses"], None, i["macs"]) for i in status["instances"]]
    r["h2"]["running"] = ["f--high-0"]
    out, _, _ = relocate(farm, current, inventory(r), frozenset({"h1"}), r)
    assert {i.name: i.host for i in out}["high-0"] == "h1"  # runs on h2 uninvited: not a second copy
    assert relocate(farm, current, inventory(r), frozenset(), r)[0] == current


def test_a_down_or_standby_hosts_report_does_not_count_as_running() -> None:
    farm = validate(FARM, "f.yaml")
    r = reports(h1="ready", h2="ready")
    status, _, _ = reconcile_farm(farm, {}, inventory(r), {}, r)
    for s in ("down", "standby"):
        stale = {h: {**v, "state": s, "running": ["f--low-0", "f--high-0", "f--keep-0"]} for h, v in r.items()}
        new, _, _ = reconcile_farm(farm, status, inventory(stale), {}, stale)
        assert {i["state"] for i in new["instances"]} == {"down"} and new["conditions"]["Ready"] is False


class Bmc:
    name = "fake bmc"

    def __init__(self, fail: str | None = None) -> None:
        self.fail, self.state, self.calls = fail, "on", 0

    def status(self) -> PowerState:
        if self.fail:
            raise PowerError(self.fail)
        return "off" if self.state == "off" else "on"

    def off(self) -> None:
        self.calls += 1
        if self.fail:
            raise PowerError(self.fail)
        self.state = "off"

    def on(self) -> None:
        self.state = "on"

    def cycle(self) -> None:
        self.state = "on"

    def identify(self, seconds: int) -> None:
        del seconds


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    yield m
    m.close()
    m.close_hosts()


def _world(m: Manager, bmc: Bmc, power: bool = True) -> None:
    m.ha.timeout, m.ha.drivers, m.ha.grace_s = 0.5, lambda config: bmc, 0.0  # a leader for long
    for h in ("h1", "h2"):
        m.store.put("host", h, {"joined": 1.0, "certificate": h,
                                **({"power": {"driver": "lab", "lab": "x", "host": h}} if power else {})})
        m.store.set_status("host", h, {**reports(x="ready")["x"], "vcpus": 4, "memory_mib": 4096,
                                       "reported": time.time() - (HOST_DOWN_AFTER_S + 5 if h == "h1" else 0)})
    m.store.put("farm", "f", {"descriptor": FARM, "owner": "admin"})


def _run(m: Manager) -> None:
    farms = m.store.objects("farm")
    m.ha.step(m.reports(), farms, m._has_ha)
    for t in list(m.ha._threads.values()):
        t.join(5)


def test_the_manager_fences_a_down_host_then_restarts_and_resumes_from_the_store(manager: Manager) -> None:
    bmc = Bmc()
    _world(manager, bmc)
    manager.store.set_status("farm", "f", {"instances": [{"name": "high-0", "vm": "high", "host": "h1"}]})
    _run(manager)
    rec = manager.store.get(KIND, "h1")
    assert rec is not None and rec.spec["state"] == "fenced" and bmc.calls == 1
    host = manager.store.get("host", "h1")
    assert host is not None and host.spec["state"] == "standby" and manager.ha.fenced() == {"h1"}
    types = [e["type"] for e in manager.store.events("host", "h1", limit=10)]
    assert "Suspected" in types and "Fenced" in types
    _run(manager)  # a second pass (or a new leader) fences nothing again
    assert bmc.calls == 1


def test_an_unconfirmed_fence_restarts_nothing_and_is_recorded(manager: Manager) -> None:
    bmc = Bmc(fail="RAKP 2 message indicates an error: unauthorized name")
    _world(manager, bmc)
    manager.store.set_status("farm", "f", {"instances": [{"name": "high-0", "vm": "high", "host": "h1"}]})
    _run(manager)
    rec = manager.store.get(KIND, "h1")
    assert rec is not None and rec.spec["state"] == "failed" and manager.ha.fenced() == frozenset()
    failed = [e for e in manager.store.events("host", "h1", limit=10) if e["type"] == "FenceFailed"]
    assert failed and "unauthorized name" in failed[0]["message"]
    host = manager.store.get("host", "h1")
    assert host is not None and host.spec.get("state", "ready") == "ready"


def test_a_host_without_power_is_never_fenced_and_the_event_says_what_to_do(manager: Manager) -> None:
    bmc = Bmc()
    _world(manager, bmc, power=False)
    manager.store.set_status("farm", "f", {"instances": [{"name": "high-0", "vm": "high", "host": "h1"}]})
    _run(manager)
    _run(manager)
    said = [e for e in manager.store.events("host", "h1", limit=10) if e["type"] == "NotFenced"]
    assert bmc.calls == 0 and len(said) == 1 and "fence --force" in said[0]["message"]


def test_two_passes_at_once_start_one_fence(manager: Manager) -> None:
    bmc = Bmc()
    _world(manager, bmc)
    manager.store.set_status("farm", "f", {"instances": [{"name": "high-0", "vm": "high", "host": "h1"}]})
    other = harestart.HaRestart(manager, 0.5, lambda config: bmc)
    rec = manager.store.get(KIND, "h1")
    assert rec is None
    passes = [threading.Thread(target=h.step, args=(manager.reports(), manager.store.objects("farm"),
                                                    manager._has_ha)) for h in (manager.ha, other)]
    for t in passes:
        t.start()
    for t in passes:
        t.join()
    for t in [*manager.ha._threads.values(), *other._threads.values()]:
        t.join(5)
    assert bmc.calls == 1


def test_a_new_leader_fences_nobody_before_it_has_waited_the_heartbeat_timeout_itself(manager: Manager) -> None:
    bmc = Bmc()
    _world(manager, bmc)  # h1's stored report is old: as after a manager outage
    manager.store.set_status("farm", "f", {"instances": [{"name": "high-0", "vm": "high", "host": "h1"}]})
    now = [1000.0]
    ha = harestart.HaRestart(manager, 0.5, lambda config: bmc, grace_s=HOST_DOWN_AFTER_S, clock=lambda: now[0])
    for _ in range(3):  # passes every 10 s within the grace: h1 is left alone
        ha.step(manager.reports(), manager.store.objects("farm"), manager._has_ha)
        now[0] += min(10.0, HOST_DOWN_AFTER_S / 4)
    assert bmc.calls == 0 and manager.store.get(KIND, "h1") is None
    now[0] = 1000.0 + HOST_DOWN_AFTER_S
    ha.step(manager.reports(), manager.store.objects("farm"), manager._has_ha)
    for t in list(ha._threads.values()):
        t.join(5)
    assert bmc.calls == 1


def test_across_farms_the_highest_priority_is_restarted_first(manager: Manager) -> None:
    bmc = Bmc()
    _world(manager, bmc)
    manager.store.put("host", "h2", {"joined": 1.0, "certificate": "h2"})
    manager.store.set_status("host", "h2", {**reports(x="ready")["x"], "reported": time.time()})  # 1.5 GiB
    manager.store.delete("farm", "f")
    h1 = manager.store.get("host", "h1")
    assert h1 is not None
    manager.store.put("host", "h1", {**h1.spec, "state": "standby"})
    harestart.note_fenced(manager.store, "h1", "confirmed off")
    one = FARM.split("    - {name: high")[0]  # a farm of one 1 GiB VM `low`, priority 0
    for name, text in (("a", one), ("z", one.replace("image: test-guest,", "image: test-guest, priority: 7,")),):
        manager.store.put("farm", name, {"descriptor": text.replace("name: f}", f"name: {name}}}"), "owner": "admin"})
        manager.store.set_status("farm", name, {"instances": [
            {"name": "low-0", "vm": "low", "host": "h1", "addresses": {"net": "10.1.0.2"}, "macs": {}}]})
    manager.reconcile(wake=False)
    where = {o.name: o.status["instances"][0]["host"] for o in manager.store.objects("farm")}
    assert where == {"a": "h1", "z": "h2"}, where
