"""The Manager without HTTP, its controllers driven by a fake store's watch (issue 10, item 3):
requests store and return, the loop plans; a report with no news plans nothing; one farm that
cannot be planned is Degraded alone; the desired state is cached per generation and serving it
writes nothing; VNET key rotations step in the loop; long polls wake only for their host."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.manager import farmops
from softudc.manager.auth import Principal
from softudc.manager.controller import reconcile_farm
from softudc.manager.service import Manager, init
from tests.unit.manager.test_loop import FakeStore

ADMIN = Principal("admin", "admin")
REPORT = {"vcpus": 64, "memory_mib": 65536, "running": []}
LOOP = "softudc-controllers"


def farm(name: str, vnet: str = "v", replicas: int = 1, vcpus: int = 1) -> str:
    return (f"apiVersion: softudc.io/v1alpha1\nkind: Farm\nmetadata: {{name: {name}}}\nspec:\n"
            f"  vnets: [{{name: {vnet}, subnet: 10.0.0.0/24}}]\n"
            f"  vms: [{{name: a, replicas: {replicas}, vcpus: {vcpus}, memory: 64Mi, image: g, "
            f"nics: [{{vnet: {vnet}}}]}}]\n")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Manager, FakeStore]]:
    init(tmp_path, ["127.0.0.1"])
    store = FakeStore()
    m = Manager(tmp_path, store=store)
    for h in ("h1", "h2"):
        store.put("host", h, {"joined": time.time()})
        m.host_status(h, h, REPORT)
    assert m.settle()
    yield m, store
    m.close()


def status(store: FakeStore, name: str) -> dict[str, Any]:
    obj = store.get("farm", name)
    assert obj is not None
    return obj.status


def test_put_farm_stores_and_the_loop_plans_it(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    answer = m.put_farm(ADMIN, "x", farm("x", replicas=2), None)
    me = "MainThread"
    assert store.written_by(me, kind="farm") == ["x"]  # the request stored the spec: nothing else
    assert store.written_by(LOOP, "status", "farm") == ["x"]  # the controllers planned it
    assert len(answer["status"]["instances"]) == 2  # and the answer waited for that, as before


def test_put_farm_does_not_plan_in_the_request_when_the_loop_is_held(
        world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    m, store = world
    monkeypatch.setattr(farmops, "APPLY_WAIT_S", 0.2)
    store.hold()  # the controllers see no change until released
    answer = m.put_farm(ADMIN, "x", farm("x"), None)
    assert answer["status"] == {} and store.written_by(LOOP, "status", "farm") == []  # bounded wait, then answered
    store.release()
    assert m.settle() and status(store, "x")["conditions"]["Placed"]


def test_a_spec_that_cannot_be_planned_is_still_refused_in_the_request(
        world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    from softudc.manager.errors import ApiError
    from softudc.manager.planner import PlanError

    def no_ids(*args: Any) -> Any:
        raise PlanError("all 4093 VNET ids are in use")

    m, store = world
    monkeypatch.setattr("softudc.manager.planning.reconcile_farm", no_ids)
    with pytest.raises(ApiError, match="cannot be planned, nothing was changed: all 4093"):
        m.put_farm(ADMIN, "x", farm("x"), None)
    assert store.get("farm", "x") is None


def test_a_report_with_no_news_plans_nothing(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.put_farm(ADMIN, "x", farm("x"), None)
    passes, writes = m.controllers.passes, len(store.writes)
    for _ in range(3):
        m.host_status("h1", "h1", REPORT)  # only `reported` moves
    assert m.settle() and m.controllers.passes == passes
    # Not even stored (decision 5): heartbeats in the book; its flush (kind heartbeat) is no news either
    assert [w for w in store.writes[writes:] if w[1] != "heartbeat"] == []
    m.host_status("h1", "h1", {**REPORT, "vcpus": 32})
    assert m.settle() and m.controllers.passes == passes + 1


def test_one_farm_whose_plan_fails_is_degraded_alone(world: tuple[Manager, FakeStore],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m, store = world
    m.put_farm(ADMIN, "x", farm("x"), None)

    def failing(f: Any, *args: Any) -> Any:
        if f.name == "x":
            raise RuntimeError("boom")
        return reconcile_farm(f, *args)

    monkeypatch.setattr("softudc.manager.planning.reconcile_farm", failing)
    m.put_farm(ADMIN, "y", farm("y", "w"), None)
    x, y = status(store, "x"), status(store, "y")
    assert x["conditions"]["Degraded"] and "boom" in x["problem"] and x["instances"]  # kept what it ran
    assert y["conditions"]["Placed"] and "problem" not in y
    assert m.controllers.running()  # the loop goes on


def test_the_desired_state_is_cached_per_generation_and_serving_it_writes_nothing(
        world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.put_farm(ADMIN, "x", farm("x", replicas=2), None)
    computed, writes = m.polls.computed, len(store.writes)
    first = {h: m.desired(h, h) for h in ("h1", "h2")}
    assert {h: m.desired(h, h) for h in ("h1", "h2")} == first and m.polls.computed == computed + 2
    assert len(store.writes) == writes  # keys were made by the pass; serving writes nothing
    assert all(v["keys"]["secrets"] for d in first.values() for v in d["vnets"])
    m.host_status("h1", "h1", {**REPORT, "vcpus": 48})  # news: a pass, a new generation
    assert m.settle()
    m.desired("h1", "h1")  # computed again by the pass, for both hosts that asked before: a hit
    assert m.polls.computed == computed + 4


def test_a_generations_misses_share_one_read_of_the_farms_and_reports(
        world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts asking after the generation moved (not waiting then) cost their own desired state,
    not a read of every farm and report each: that was O(hosts^2) per generation at scale."""
    m, _ = world
    m.put_farm(ADMIN, "x", farm("x", replicas=2), None)
    reads: list[int] = []
    real = m._read_inputs

    def counted() -> Any:
        reads.append(1)
        return real()

    monkeypatch.setattr(m, "_read_inputs", counted)
    first = {h: m.desired(h, h) for h in ("h1", "h2")}
    assert len(reads) <= 1 and first == {h: m._desired(h) | {"etag": first[h]["etag"]} for h in first}
    m.host_status("h1", "h1", {**REPORT, "vcpus": 48})  # news: a pass, a new generation
    assert m.settle()
    reads.clear()
    assert {h: m.desired(h, h)["etag"] for h in ("h1", "h2")} and len(reads) <= 1  # at most once again (the
    # pass computes the hosts that asked in the generation before, in one read, before they ask again)


def test_key_rotation_steps_are_taken_by_the_loop(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.key_rotation_step_s = 0.1
    m.controllers.every_s = 0.05  # its timer brings the steps
    m.put_farm(ADMIN, "x", farm("x"), None)
    host = next(h for h in ("h1", "h2") if m.desired(h, h)["vnets"])
    old = m.desired(host, host)["vnets"][0]["keys"]
    assert m.rotate_vnet_keys("x", "v") == ["v"]
    deadline = time.monotonic() + 10
    while m.desired(host, host)["vnets"][0]["keys"]["send_epoch"] == old["send_epoch"]:
        assert time.monotonic() < deadline, "the rotation never reached its sending step"
        time.sleep(0.05)
    assert LOOP in {t for op, kind, _, t in store.writes if kind == "vnetkey" and op == "put"}
    assert any(e["type"] == "KeysRotated" for e in store.events("farm", "x"))


def test_wait_desired_wakes_only_its_host_and_times_out(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.put_farm(ADMIN, "x", farm("x", replicas=1), None)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str]:
        since = {h: m.desired(h, h)["etag"] for h in ("h1", "h2")}
        polls = {h: asyncio.create_task(m.wait_desired(h, h, since[h], 3 if h == "h1" else 30)) for h in since}
        while m.long_polls_waiting() < 2:
            await asyncio.sleep(0.01)
        # y's one instance can only land on h2: h1 takes no new VMs (what it runs stays, unchanged).
        await asyncio.to_thread(m.set_host_state, ADMIN, "h1", {"state": "maintenance"})
        await asyncio.to_thread(m.put_farm, ADMIN, "y", farm("y", "w"), None)
        assert status(store, "y")["instances"][0]["host"] == "h2"
        woken = await asyncio.wait_for(polls["h2"], 10)  # long before its 30 s
        assert not polls["h1"].done() or polls["h1"].result()["etag"] == since["h1"]  # a slow machine: it timed out
        slept = await asyncio.wait_for(polls["h1"], 10)
        assert woken["etag"] != since["h2"] and any(v["name"] == "y--a-0" for v in woken["vms"])
        return woken, slept, since["h1"]

    _, slept, etag = asyncio.run(scenario())
    assert slept["etag"] == etag  # its state never moved: answered at its deadline, unchanged
    assert m.long_polls_waiting() == 0


def test_wait_desired_refuses_another_host_s_certificate(world: tuple[Manager, FakeStore]) -> None:
    from softudc.manager.errors import ApiError

    m, _ = world
    with pytest.raises(ApiError, match="client certificate"):
        asyncio.run(m.wait_desired("h2", "h1", "", 1))


def test_an_apply_parses_its_descriptor_once(world: tuple[Manager, FakeStore], monkeypatch: pytest.MonkeyPatch) -> None:
    from softudc.model.farm import validate

    m, store = world
    parsed: list[str] = []

    def counting(text: str, file: str = "<farm>", strict: bool = True) -> Any:
        parsed.append(file)
        return validate(text, file, strict)

    monkeypatch.setattr("softudc.manager.farms.validate", counting)
    monkeypatch.setattr("softudc.manager.farmops.validate", counting)
    text = farm("once").replace("image: g", f"image: g{time.monotonic_ns()}")  # a text no cache has seen
    m.put_farm(ADMIN, "once", text, None)
    assert status(store, "once")["conditions"]["Placed"] and len(parsed) == 1  # the request's; the pass reuses it
