"""Rebalance plans: computed and stored (dry run), refused when the cluster changed, run exactly
step by step within the limits, stopped at a failed move with its reason; every move an event."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from softudc.manager import plans
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager, init
from tests.unit.manager.test_drain import DEMO, report, where

ADMIN = Principal("admin", "admin")


def busy_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Manager:
    """demo on h1..h3, h4 joined empty after; the host holding db burns every VM's CPU."""
    monkeypatch.setattr(plans, "_keep_stepping", lambda *a: None)  # the test steps
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    for h in ("h1", "h2", "h3"):
        m.store.put("host", h, {"joined": time.time()})
        report(m, h, [])
    m.put_farm(ADMIN, "demo", DEMO, None)
    for h in ("h1", "h2", "h3"):
        report(m, h, [f"demo--{n}" for n, i in where(m).items() if i["host"] == h])
    m.store.put("host", "h4", {"joined": time.time()})
    report(m, "h4", [])
    hot = where(m)["db-0"]["host"] if "db-0" in where(m) else next(i["host"] for n, i in where(m).items()
                                                                    if n.startswith("db"))
    figs = {f"demo--{n}": {"cpu_cores": {"short": 6.0, "long": 6.0}, "memory_mib": {"short": 100.0, "long": 100.0}}
            for n, i in where(m).items() if i["host"] == hot}
    m.load_view.note(hot, {"at": time.time(), "samples": 3, "vms": figs,
                           "host": {"cpu_cores": {"short": 7.0, "long": 7.0},
                                    "memory_mib": {"short": 200.0, "long": 200.0}}})
    assert m.settle()
    m.controllers.stop()  # the test completes moves by hand in the farm's status
    return m


def finish_moves(m: Manager, back: bool = False) -> None:
    obj = m.store.get("farm", "demo")
    assert obj is not None
    insts = list(obj.status["instances"])
    for i in insts:
        if i.get("migrating"):
            i["host"] = i["host"] if back else i["migrating"]["to"]
            del i["migrating"]
    m.store.set_status("farm", "demo", {**obj.status, "instances": insts})


def test_a_dry_run_stores_the_plan_and_moves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    before = {n: i["host"] for n, i in where(m).items()}
    p = plans.create(m, ADMIN, {"kind": "rebalance", "dry_run": True})
    assert p["state"] == "planned" and p["moves"] and p["score_after"] < p["score_before"]
    assert all(mv["reason"] and mv["state"] == "pending" and mv["destination"] != mv["source"] for mv in p["moves"])
    assert p["before"]["spread_cpu"] > p["after"]["spread_cpu"]
    assert {n: i["host"] for n, i in where(m).items()} == before
    assert [x["id"] for x in plans.listing(m, ADMIN)] == [p["id"]]
    with pytest.raises(ApiError) as e:
        plans.create(m, Principal("op", "operator", ("demo",)), {})
    assert e.value.status == 403
    with pytest.raises(ApiError) as e:
        plans.create(m, ADMIN, {"max_per_source": 0})
    assert e.value.status == 400 and "max_per_source" in str(e.value)
    m.close()


def test_a_plan_is_refused_naming_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    p = plans.create(m, ADMIN, {})
    m.store.put("host", "h5", {"joined": time.time()})
    report(m, "h5", [])
    with pytest.raises(ApiError) as e:
        plans.run(m, ADMIN, p["id"])
    assert e.value.status == 409 and "host h5 is new" in str(e.value) and "Nothing was moved" in str(e.value)
    assert not any(i.get("migrating") for i in where(m).values())
    assert plans.show(m, ADMIN, p["id"])["state"] == "planned"
    m.close()


def test_running_a_plan_moves_exactly_its_moves_step_by_step(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    p = plans.create(m, ADMIN, {"max_per_source": 1, "max_per_destination": 1})
    planned = {(mv["instance"], mv["destination"]) for mv in p["moves"]}
    steps = max(mv["step"] for mv in p["moves"]) + 1
    state = plans.run(m, ADMIN, p["id"])
    for _ in range(steps + 2):
        moving = [i for i in where(m).values() if i.get("migrating")]
        assert len({i["host"] for i in moving}) == len(moving)  # at most one per source
        assert len({i["migrating"]["to"] for i in moving}) == len(moving)  # and per destination
        finish_moves(m)
        state = plans.step(m, ADMIN, p["id"])
        if state["state"] != "running":
            break
    assert state["state"] == "done" and state["progress"]["done"] == len(planned)
    assert {(n, i["host"]) for n, i in where(m).items() if (n, i["host"]) in planned} == planned
    types = [e["type"] for e in m.store.events("plan", p["id"])]
    assert types.count("Move") == types.count("MoveDone") == len(planned) and types[-1] == "Done"
    m.close()


def test_a_failed_move_stops_the_plan_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    p = plans.create(m, ADMIN, {"max_per_step": 1})
    plans.run(m, ADMIN, p["id"])
    moving = next(n for n, i in where(m).items() if i.get("migrating"))
    finish_moves(m, back=True)
    m.store.event("farm", "demo", "MigrationFailed", f"{moving}: h1 -> h4: the destination said no")
    state = plans.step(m, ADMIN, p["id"])
    assert state["state"] == "failed" and "the destination said no" in state["reason"]
    assert state["progress"]["failed"] == 1 and state["progress"]["done"] == 0
    assert plans.run(m, ADMIN, p["id"])["state"] == "failed"  # a failed plan is not run again
    m.close()


def test_what_changed_lists_hosts_and_vms() -> None:
    from softudc.placement.cluster import BHost, BVm, Cluster
    c = Cluster([BHost("a", 4, 1024), BHost("b", 4, 1024, "draining")], [BVm("f/x", "b", 1, 128)])
    lines = plans.changes({"hosts": {"a": "ready", "b": "ready", "c": "ready"}, "vms": {"f/x": "a", "f/y": "a"}}, c)
    assert lines == ["host b: ready -> draining", "host c is gone", "vm f/x: a -> b", "vm f/y is gone"]


def test_resume_steps_a_running_plan_nobody_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    p = plans.create(m, ADMIN, {"max_per_step": 1})
    plans.run(m, ADMIN, p["id"])
    for _ in range(len(p["moves"]) + 2):
        finish_moves(m)
        plans.resume(m)  # a new leader's pass
    assert plans.show(m, ADMIN, p["id"])["state"] == "done"
    m.close()


def test_steps_at_once_start_each_move_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run, its stepping thread and the leader's pass step one plan at the same moment (CI saw the
    second start of a move refused, failing the plan): each move starts once, none fails."""
    import threading
    m = busy_world(tmp_path, monkeypatch)
    p = plans.create(m, ADMIN, {"max_per_source": 1})
    started: list[str] = []
    migrate = m.migrate

    def slow_migrate(*a: object, **kw: object) -> object:
        started.append(str(a[2]))
        time.sleep(0.05)  # the other threads' turn
        return migrate(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(m, "migrate", slow_migrate)
    m.store.set_status("plan", p["id"], {**m.store.get("plan", p["id"]).status, "state": "running"})  # type: ignore[union-attr]
    threads = [threading.Thread(target=plans.step, args=(m, ADMIN, p["id"])) for _ in range(3)]
    threads.append(threading.Thread(target=plans.resume, args=(m,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = plans.show(m, ADMIN, p["id"])
    assert state["state"] == "running" and state["progress"]["failed"] == 0, state
    assert len(started) == len(set(started)) == state["progress"]["moving"], started
    m.close()


def test_a_move_already_under_way_to_its_destination_is_followed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Started by another manager of the group: the refusal ("already moving") is not a failure."""
    m = busy_world(tmp_path, monkeypatch)
    p = plans.create(m, ADMIN, {"max_per_step": 4})
    first = p["moves"][0]
    m.store.set_status("plan", p["id"], {**m.store.get("plan", p["id"]).status, "state": "running"})  # type: ignore[union-attr]
    m.migrate(ADMIN, first["farm"], first["instance"], {"to": first["destination"]})
    state = plans.step(m, ADMIN, p["id"])
    assert state["state"] == "running" and state["moves"][0]["state"] == "moving", state
    m.close()
