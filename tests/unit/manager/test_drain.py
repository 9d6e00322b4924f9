"""Draining a host: planned whole first (an impossible drain names each VM and changes nothing),
then migrations a bounded number at a time, `maintenance` once empty, `ready` after undrain."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from softudc.manager import drain
from softudc.manager.auth import Principal
from softudc.manager.service import ApiError, Manager, init

DEMO = (Path(__file__).parents[3] / "configs" / "farms" / "demo.yaml").read_text()
ADMIN = Principal("admin", "admin")


def report(m: Manager, host: str, running: list[str]) -> None:
    m.host_status(host, host, {"vcpus": 8, "memory_mib": 8192, "running": running,
                               "sizes": {v: [1, 128] for v in running}, "migration_uri": "qemu+tcp://127.0.0.1/system"})
    m.note_address(host, "127.0.0.1")
    m.settle()


def where(m: Manager) -> dict[str, dict[str, Any]]:
    obj = m.store.get("farm", "demo")
    assert obj is not None
    return {i["name"]: i for i in obj.status["instances"]}


def world(tmp_path: Path, hosts: tuple[str, ...]) -> Manager:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    for h in hosts:
        m.store.put("host", h, {"joined": time.time()})
        report(m, h, [])
    m.put_farm(ADMIN, "demo", DEMO, None)
    for h in hosts:
        report(m, h, [f"demo--{n}" for n, i in where(m).items() if i["host"] == h])
    return m


def busiest(m: Manager) -> str:
    on: dict[str, int] = {}
    for i in where(m).values():
        on[i["host"]] = on.get(i["host"], 0) + 1
    return max(sorted(on), key=lambda h: on[h])


def test_an_impossible_drain_names_each_vm_and_changes_nothing(tmp_path: Path) -> None:
    m = world(tmp_path, ("h1", "h2", "h3"))  # web x3 with one per host: no web can leave its host
    host = busiest(m)
    before = {n: dict(i) for n, i in where(m).items()}
    with pytest.raises(ApiError) as e:
        drain.start(m, ADMIN, host)
    web = next(n for n, i in before.items() if i["host"] == host and n.startswith("web"))
    assert e.value.status == 409 and f"demo/{web}: no host can take it" in str(e.value)
    assert "nothing was moved" in str(e.value)
    assert where(m) == before
    obj = m.store.get("host", host)
    assert obj is not None and obj.spec.get("state", "ready") == "ready" and "drain" not in obj.spec
    m.close()


def test_a_drain_moves_everything_a_bounded_number_at_a_time_then_maintenance_then_undrain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drain, "_keep_stepping", lambda *a: None)  # the test steps
    monkeypatch.setattr(drain, "PARALLEL", 1)
    m = world(tmp_path, ("h1", "h2", "h3"))
    for h in ("h4", "h5"):  # joined after: room for the web instance that leaves
        m.store.put("host", h, {"joined": time.time()})
        report(m, h, [])
    host = busiest(m)
    total = sum(1 for i in where(m).values() if i["host"] == host)
    assert total == 2  # web and db
    # The test completes each move by hand in the farm's status: no controllers' pass may run
    # meanwhile (one that read the status before that write would write its older view over it).
    assert m.settle()
    m.controllers.stop()
    first = drain.start(m, ADMIN, host)
    assert first["state"] == "draining" and first["total"] == 2 and len(first["moving"]) == 1
    for _ in range(6):  # each moving VM completes: the hosts report it where it went
        for n, i in where(m).items():
            if i.get("migrating"):
                i["host"] = i["migrating"]["to"]
                del i["migrating"]
                obj = m.store.get("farm", "demo")
                assert obj is not None
                insts = where(m)
                insts[n] = i
                m.store.set_status("farm", "demo", {**obj.status, "instances": list(insts.values())})
        if drain.step(m, ADMIN, host)["state"] == "maintenance":
            break
    done = drain.progress(m, host)
    assert done["state"] == "maintenance" and done["moved"] == 2 and done["left"] == []
    webs = [i["host"] for n, i in where(m).items() if n.startswith("web")]
    assert len(set(webs)) == 3 and host not in webs and first["moved"] == 0  # anti-affinity holds
    types = [e["type"] for e in m.store.events("host", host)]
    assert types.count("DrainMove") == 2 and "Draining" in types and "Maintenance" in types
    assert drain.undrain(m, ADMIN, host)["state"] == "ready"
    m.close()


def test_only_admins_drain(tmp_path: Path) -> None:
    m = world(tmp_path, ("h1", "h2"))
    with pytest.raises(ApiError) as e:
        drain.start(m, Principal("v", "viewer", ("demo",)), "h1")
    assert e.value.status == 403
    with pytest.raises(ApiError):
        drain.start(m, ADMIN, "nope")
    m.close()


class FakePower:
    """A power driver whose host `m` sees report again when it is powered on."""

    name = "fake"

    def __init__(self, m: Manager, host: str, stuck_on: bool = False) -> None:
        self.m, self.host, self.stuck_on = m, host, stuck_on
        self.state, self.calls = "on", []  # type: ignore[var-annotated]

    def status(self) -> str:
        return self.state

    def off(self) -> None:
        self.calls.append("off")
        self.state = "on" if self.stuck_on else "off"

    def on(self) -> None:
        self.calls.append("on")
        self.state = "on"
        time.sleep(0.01)
        report(self.m, self.host, [])

    def cycle(self) -> None:
        self.off()
        self.on()

    def identify(self, seconds: int) -> None:
        self.calls.append(f"identify {seconds}")


def drained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Manager, str]:
    """A world with an empty host h4 (nothing to move: maintenance at the first step)."""
    monkeypatch.setattr(drain, "_keep_stepping", lambda *a: None)
    m = world(tmp_path, ("h1", "h2", "h3"))
    m.store.put("host", "h4", {"joined": time.time()})
    report(m, "h4", [])
    return m, "h4"


def test_power_off_needs_a_power_config_and_then_nothing_changes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    m, host = drained(tmp_path, monkeypatch)
    with pytest.raises(ApiError) as e:
        drain.start(m, ADMIN, host, power_off=True)
    assert e.value.status == 409 and "no power config" in str(e.value) and "nothing was changed" in str(e.value)
    obj = m.store.get("host", host)
    assert obj is not None and obj.spec.get("state", "ready") == "ready" and "drain" not in obj.spec
    m.close()


def test_a_drain_with_power_off_powers_the_host_off_lights_it_and_undrain_brings_it_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, host = drained(tmp_path, monkeypatch)
    fake = FakePower(m, host)
    m.__dict__["power_drivers"] = lambda config: fake
    m.store.put("host", host, {**m.store.get("host", host).spec, "power": {"driver": "lab"}})  # type: ignore[union-attr]
    assert drain.start(m, ADMIN, host, power_off=True)["state"] == "maintenance"
    p = drain.power_off(m, ADMIN, host)  # what the drain's thread does once in maintenance
    assert p["power"] == "off" and p["state"] == "maintenance", p
    assert fake.calls == ["off", f"identify {drain.IDENTIFY_S}"]
    assert "PoweredOff" in [e["type"] for e in m.store.events("host", host)]
    assert drain.power_off(m, ADMIN, host)["power"] == "off" and fake.calls.count("off") == 1  # once
    answer = drain.undrain(m, ADMIN, host)
    assert answer["power"] == "starting" and answer["state"] == "maintenance"
    deadline = time.monotonic() + 10

    def said() -> bool:  # the thread sets the state, then writes its event
        return "powered on through fake" in m.store.events("host", host)[-1]["message"]

    while not said() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert said(), m.store.events("host", host)[-3:]
    assert drain.progress(m, host)["state"] == "ready"
    assert fake.calls[-2:] == ["on", "identify 0"]
    obj = m.store.get("host", host)
    assert obj is not None and "drain" not in obj.spec
    m.close()


def test_a_power_off_not_confirmed_leaves_the_host_in_maintenance_saying_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, host = drained(tmp_path, monkeypatch)
    monkeypatch.setattr(drain, "OFF_TIMEOUT_S", 0.2)
    fake = FakePower(m, host, stuck_on=True)
    m.__dict__["power_drivers"] = lambda config: fake
    m.store.put("host", host, {**m.store.get("host", host).spec, "power": {"driver": "lab"}})  # type: ignore[union-attr]
    drain.start(m, ADMIN, host, power_off=True)
    p = drain.power_off(m, ADMIN, host)
    assert p["power"] == "failed" and "not confirmed off" in p["power_reason"] and p["state"] == "maintenance", p
    assert "identify 255" not in fake.calls
    events = m.store.events("host", host)
    assert events[-1]["type"] == "PowerOffFailed" and "--power-off` tries again" in events[-1]["message"]
    m.close()
