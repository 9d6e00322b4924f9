"""Rolling maintenance: which hosts start (never more than max_unavailable under way, none after a
failure), how a rollout ends, and whole rollouts on a manager with fake power drivers: every host
drained, scripted, power-cycled once, back to ready; a failing script stops it with that host
drained; a rollout cut short is resumed by a new runner where it was."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.manager import drain, rollout
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager, init
from tests.unit.manager.test_drain import FakePower, report

ADMIN = Principal("admin", "admin")
PHASES = ("pending", *rollout.ACTIVE, "done", "failed")


def spec_of(phases: list[str], n: int) -> dict[str, Any]:
    hosts = [f"h{i}" for i in range(len(phases))]
    return {"hosts": hosts, "max_unavailable": n, "state": "running",
            "progress": {h: {"phase": p} for h, p in zip(hosts, phases, strict=True)}}


@given(st.lists(st.sampled_from(PHASES), min_size=1, max_size=12), st.integers(1, 5))
def test_to_start_never_exceeds_max_unavailable_and_starts_nothing_after_a_failure(phases: list[str], n: int) -> None:
    spec = spec_of(phases, n)
    start = rollout.to_start(spec)
    active = sum(1 for p in phases if p in rollout.ACTIVE)
    assert len(start) + active <= max(n, active)
    assert all(spec["progress"][h]["phase"] == "pending" for h in start)
    if "failed" in phases:
        assert start == []
    pending = [h for h in spec["hosts"] if spec["progress"][h]["phase"] == "pending"]
    assert start == pending[:len(start)]  # in the selector's order
    ended = rollout.outcome(spec)
    assert (ended == "done") == all(p == "done" for p in phases)
    assert ended != "failed" or ("failed" in phases and active == 0)


def test_selectors_name_hosts_globs_or_all_and_a_miss_is_refused() -> None:
    hosts = ["h3", "h1", "h2", "db1"]
    assert rollout.select_hosts("all", hosts) == ["db1", "h1", "h2", "h3"]
    assert rollout.select_hosts("h2, h*", hosts) == ["h2", "h1", "h3"]
    with pytest.raises(ApiError, match="'x9' names no joined host"):
        rollout.select_hosts("h1,x9", hosts)
    with pytest.raises(ApiError, match="empty"):
        rollout.select_hosts(" , ", hosts)


def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hosts: tuple[str, ...],
            scripts: dict[str, int]) -> tuple[Manager, dict[str, FakePower], list[tuple[str, str]]]:
    monkeypatch.setattr(rollout, "POLL_S", 0.05)
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    fakes, ran = {}, []
    for h in hosts:
        m.store.put("host", h, {"joined": time.time(), "power": {"driver": "lab", "lab": "x", "host": h}})
        report(m, h, [])
        fakes[h] = FakePower(m, h)
    m.__dict__["power_drivers"] = lambda config: fakes[config["host"]]

    def run(script: str, netns: str | None, host: str, address: str, name: str, timeout: float) -> tuple[int, str]:
        ran.append((host, address))
        return scripts.get(host, 0), "boom" if scripts.get(host) else ""

    m.__dict__["_rollout_runner"] = rollout.Runner(m, run=run)
    return m, fakes, ran


def ended(m: Manager, name: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = m.store.get(rollout.KIND, name)
        assert obj is not None
        if obj.spec["state"] != "running":
            return obj.spec
        time.sleep(0.05)
    raise AssertionError(f"rollout {name} still running: {m.store.get(rollout.KIND, name)}")


def under_way(m: Manager, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many hosts were under way after each progress write (filled as the rollout goes)."""
    seen: list[int] = []
    update = rollout.Runner.update

    def counting(self: rollout.Runner, name: str, host: str, **fields: Any) -> dict[str, Any]:
        out = update(self, name, host, **fields)
        obj = m.store.get(rollout.KIND, name)
        assert obj is not None
        seen.append(sum(1 for p in obj.spec["progress"].values() if p["phase"] in rollout.ACTIVE))
        return out

    monkeypatch.setattr(rollout.Runner, "update", counting)
    return seen


def test_a_rollout_drains_scripts_cycles_and_brings_back_every_host_one_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, fakes, ran = manager(tmp_path, monkeypatch, ("h1", "h2", "h3"), {})
    seen = under_way(m, monkeypatch)
    answer = rollout.create(m, ADMIN, "r1", "h*", "#!/bin/sh\n", "up.sh", 1, {})
    assert answer["hosts"] == ["h1", "h2", "h3"] and "script" not in answer and answer["script_bytes"] == 10
    spec = ended(m, "r1")
    assert spec["state"] == "done" and spec["reason"] == "all 3 host(s) done", spec
    assert max(seen) == 1  # never two hosts out of service
    assert ran == [("h1", "127.0.0.1"), ("h2", "127.0.0.1"), ("h3", "127.0.0.1")]  # where each reports from
    for h, fake in fakes.items():
        assert fake.calls.count("off") == 1 and fake.calls.count("on") == 1, (h, fake.calls)  # one cycle each
        assert drain.progress(m, h)["state"] == "ready"
    types = [e["type"] for e in m.store.events("host", "h2")]
    assert types.count("Rollout") == 5 and "Undrained" in types
    with pytest.raises(ApiError, match="exists already"):
        rollout.create(m, ADMIN, "r1", "h1", "#!/bin/sh\n", "up.sh", 1, {})
    m.close()


def test_a_failing_script_stops_the_rollout_with_that_host_drained(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    m, fakes, ran = manager(tmp_path, monkeypatch, ("h1", "h2", "h3"), {"h2": 3})
    rollout.create(m, ADMIN, "r2", "all", "#!/bin/sh\nexit 3\n", "up.sh", 1, {})
    spec = ended(m, "r2")
    assert spec["state"] == "failed" and spec["reason"] == "h2: script: script up.sh exited 3: boom", spec
    assert [spec["progress"][h]["phase"] for h in ("h1", "h2", "h3")] == ["done", "failed", "pending"]
    assert drain.progress(m, "h2")["state"] == "maintenance"  # left drained
    assert fakes["h2"].calls == [] and fakes["h3"].calls == [] and [h for h, _ in ran] == ["h1", "h2"]
    with pytest.raises(ApiError, match="no power config on h9"):
        m.store.put("host", "h9", {"joined": time.time()})
        rollout.create(m, ADMIN, "r3", "h1,h9", "#!/bin/sh\n", "up.sh", 1, {})
    assert m.store.get(rollout.KIND, "r3") is None
    m.store.put("host", "h3", {**m.store.get("host", "h3").spec, "state": "standby"})  # type: ignore[union-attr]
    with pytest.raises(ApiError, match=r"not running: h3 \(standby\)"):
        rollout.create(m, ADMIN, "r3", "h1,h3", "#!/bin/sh\n", "up.sh", 1, {})
    m.close()


def test_a_new_runner_resumes_a_rollout_where_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, fakes, ran = manager(tmp_path, monkeypatch, ("h1", "h2"), {})
    spec = rollout.new_spec("r4", ADMIN, ["h1", "h2"], "#!/bin/sh\n", "up.sh", 1, {}, time.time())
    spec["progress"]["h1"] = {"phase": "rejoining", "since": time.time(), "cycled_at": time.time()}
    m.store.put("host", "h1", {**m.store.get("host", "h1").spec, "state": "maintenance"})  # type: ignore[union-attr]
    m.store.put(rollout.KIND, "r4", spec)
    report(m, "h1", ["x"])  # it reports after the cycle (a new report: stored)
    rollout.resume(m)  # as the leader's pass does after a restart
    done = ended(m, "r4")
    assert done["state"] == "done", done
    assert fakes["h1"].calls == [] and fakes["h2"].calls.count("on") == 1  # h1 not cycled again
    assert [h for h, _ in ran] == ["h2"]
    m.close()


def test_max_unavailable_two_runs_two_hosts_at_once_and_never_three(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    m, fakes, ran = manager(tmp_path, monkeypatch, ("h1", "h2", "h3", "h4", "h5"), {})
    seen = under_way(m, monkeypatch)
    rollout.create(m, ADMIN, "r5", "all", "#!/bin/sh\n", "up.sh", 2, {})
    assert ended(m, "r5")["state"] == "done"
    assert max(seen) == 2 and sorted(h for h, _ in ran) == ["h1", "h2", "h3", "h4", "h5"]
    assert all(f.calls.count("off") == 1 for f in fakes.values())
    m.close()


def test_a_stopped_rollout_starts_no_further_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, fakes, ran = manager(tmp_path, monkeypatch, ("h1", "h2"), {})
    release = threading.Event()

    def slow(*args: Any) -> tuple[int, str]:
        ran.append((args[2], args[3]))
        release.wait(10)
        return 0, ""

    runner = rollout.Runner(m, run=slow)
    m.__dict__["_rollout_runner"] = runner
    rollout.create(m, ADMIN, "r6", "all", "#!/bin/sh\n", "up.sh", 1, {})
    deadline = time.monotonic() + 10
    while [h for h, _ in ran] != ["h1"] and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ApiError, match="may not stop"):
        rollout.stop(m, Principal("v", "viewer", ("demo",)), "r6")
    answer = rollout.stop(m, ADMIN, "r6")
    assert answer["state"] == "stopped" and answer["reason"] == "stopped by admin; left after their current phase: " \
                                                                "h1 (script)", answer
    release.set()
    time.sleep(0.5)
    spec = m.store.get(rollout.KIND, "r6").spec  # type: ignore[union-attr]
    assert spec["state"] == "stopped" and spec["progress"]["h2"]["phase"] == "pending"
    assert spec["progress"]["h1"]["phase"] == "cycling" and fakes["h1"].calls == []  # not cycled: stopped before
    assert drain.progress(m, "h1")["state"] == "maintenance"
    with pytest.raises(ApiError, match="stopped already"):
        rollout.stop(m, ADMIN, "r6")
    m.close()
