"""Power through the manager: the stored config (no password in it), commands through the host's
driver, `standby` after a power-off (not placed on, never `down`), back to ready when powered on,
instances protected, driver failures reported."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.security import HTTPAuthorizationCredentials

from softudc.manager import apideps, apipower
from softudc.manager.apipower import PowerRequest, power, set_power_config
from softudc.manager.auth import Principal
from softudc.manager.controller import HOST_DOWN_AFTER_S
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager, init
from softudc.power.driver import PowerError, PowerState

ADMIN = Principal("admin", "admin")
CONFIG = {"driver": "ipmi", "address": "10.0.0.5", "user": "admin", "password_file": "/etc/softudc/h1.pw"}


class FakeDriver:
    name = "fake bmc"

    def __init__(self) -> None:
        self.state: PowerState = "on"
        self.calls: list[str] = []
        self.fail: str | None = None

    def _do(self, what: str) -> None:
        if self.fail:
            raise PowerError(f"fake bmc: {self.fail}")
        self.calls.append(what)

    def status(self) -> PowerState:
        self._do("status")
        return self.state

    def on(self) -> None:
        self._do("on")
        self.state = "on"

    def off(self) -> None:
        self._do("off")
        self.state = "off"

    def cycle(self) -> None:
        self._do("cycle")

    def identify(self, seconds: int) -> None:
        self._do(f"identify {seconds}")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Manager, FakeDriver]]:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    m.store.put("host", "h1", {"joined": time.time(), "certificate": "f1"})
    driver = FakeDriver()
    monkeypatch.setattr(apipower, "driver_for", lambda config: driver)
    yield m, driver
    m.close()
    m.close_hosts()


def state(m: Manager) -> str:
    obj = m.store.get("host", "h1")
    assert obj is not None
    return str(obj.spec.get("state", "ready"))


def test_a_host_without_a_power_config_says_how_to_set_one(world: tuple[Manager, FakeDriver]) -> None:
    m, _ = world
    with pytest.raises(ApiError, match="h1 has no power config; set one"):
        power(m, ADMIN, "h1", PowerRequest(action="status"))
    with pytest.raises(ApiError, match="no host 'h9'"):
        power(m, ADMIN, "h9", PowerRequest(action="status"))


def test_a_bad_config_or_one_with_a_password_is_refused_and_nothing_stored(world: tuple[Manager, FakeDriver]) -> None:
    m, _ = world
    with pytest.raises(ApiError, match=r"`password` is not accepted.*nothing stored"):
        set_power_config(m, ADMIN, "h1", {**CONFIG, "password": "hunter2"})
    with pytest.raises(ApiError, match="`user` is missing"):
        set_power_config(m, ADMIN, "h1", {"driver": "ipmi", "address": "a", "password_file": "/p"})
    obj = m.store.get("host", "h1")
    assert obj is not None and "power" not in obj.spec and obj.spec["certificate"] == "f1"


def test_off_puts_the_host_in_standby_which_is_never_down_and_on_brings_it_back(
        world: tuple[Manager, FakeDriver], monkeypatch: pytest.MonkeyPatch) -> None:
    m, driver = world
    set_power_config(m, ADMIN, "h1", CONFIG)
    assert power(m, ADMIN, "h1", PowerRequest(action="status")) == {"host": "h1", "action": "status",
                                                                    "power": "on", "state": "ready"}
    assert power(m, ADMIN, "h1", PowerRequest(action="off"))["state"] == "standby"
    later: Any = time.time() + HOST_DOWN_AFTER_S + 5
    monkeypatch.setattr("softudc.manager.hosts.time.time", lambda: later)
    assert m.reports()["h1"]["state"] == "standby"  # silent on purpose: not down
    assert power(m, ADMIN, "h1", PowerRequest(action="on"))["state"] == "ready"
    power(m, ADMIN, "h1", PowerRequest(action="identify", seconds=30))
    assert driver.calls == ["status", "off", "on", "identify 30"]
    events = [(e["type"], e["message"]) for e in m.store.events("host", "h1", limit=20)]
    assert ("State", "by admin: ready -> standby (powered off through fake bmc)") in events
    assert ("Power", "by admin: identify 30 s through fake bmc") in events


def test_off_is_refused_while_instances_are_placed_unless_forced(world: tuple[Manager, FakeDriver]) -> None:
    m, driver = world
    set_power_config(m, ADMIN, "h1", CONFIG)
    m.store.put("farm", "shop", {})
    m.store.set_status("farm", "shop", {"instances": [{"name": "web-0", "host": "h1"}, {"name": "db-0", "host": "h2"}]})
    with pytest.raises(ApiError, match=r"h1 still has 1 instance\(s\): shop/web-0; powering it off stops them"):
        power(m, ADMIN, "h1", PowerRequest(action="off"))
    assert driver.calls == [] and state(m) == "ready"
    power(m, ADMIN, "h1", PowerRequest(action="off", force=True))
    assert driver.calls == ["off"] and state(m) == "standby"


def test_a_driver_failure_is_a_424_with_its_reason_and_an_event(world: tuple[Manager, FakeDriver]) -> None:
    m, driver = world
    set_power_config(m, ADMIN, "h1", CONFIG)
    driver.fail = "the BMC refused the password: check the password file"
    with pytest.raises(ApiError, match="refused the password") as e:
        power(m, ADMIN, "h1", PowerRequest(action="off"))
    assert e.value.status == 424 and state(m) == "ready"
    assert m.store.events("host", "h1", limit=5)[-1]["type"] == "PowerFailed"
    assert m.store.get("hafence", "h1") is None  # unconfirmed: nothing may restart


def test_only_an_admin_may_power_hosts(world: tuple[Manager, FakeDriver], monkeypatch: pytest.MonkeyPatch) -> None:
    m, _ = world
    monkeypatch.setattr(m.tokens, "authenticate", lambda header: Principal("ops", "operator", ("shop",)))
    with pytest.raises(ApiError, match="ops \\(operator\\) may not power hosts"):
        apipower._admin(apideps.principal(m, HTTPAuthorizationCredentials(scheme="Bearer", credentials="t")))


def test_fence_is_for_a_down_host_and_confirmed_puts_it_in_standby(
        world: tuple[Manager, FakeDriver], monkeypatch: pytest.MonkeyPatch) -> None:
    m, driver = world
    set_power_config(m, ADMIN, "h1", CONFIG)
    m.host_status("h1", "h1", {"vcpus": 8, "memory_mib": 8192, "running": []})
    with pytest.raises(ApiError, match="h1 is not down \\(it still reports\\)"):
        power(m, ADMIN, "h1", PowerRequest(action="fence"))
    assert driver.calls == []
    later: Any = time.time() + HOST_DOWN_AFTER_S + 5
    monkeypatch.setattr("softudc.manager.hosts.time.time", lambda: later)
    answer = power(m, ADMIN, "h1", PowerRequest(action="fence"))
    assert answer["confirmed"] is True and answer["state"] == "standby" and driver.calls == ["off", "status"]
    assert "fenced: confirmed off" in m.store.events("host", "h1", limit=5)[-2]["message"]
    record = m.store.get("hafence", "h1")  # HA restart may now place its instances elsewhere
    assert record is not None and record.spec["state"] == "fenced" and "fenced by admin" in record.spec["reason"]


def test_an_unconfirmed_fence_is_a_424_that_says_why_and_leaves_the_state(world: tuple[Manager, FakeDriver]) -> None:
    m, driver = world
    set_power_config(m, ADMIN, "h1", CONFIG)
    driver.fail = "no BMC answered at this address and port"
    with pytest.raises(ApiError, match=r"not confirmed off within 0\.5 s: power off failed") as e:  # no wait:
        # the timeout is shorter than the retry interval
        power(m, ADMIN, "h1", PowerRequest(action="fence", force=True, timeout=0.5))
    assert e.value.status == 424 and e.value.extra["confirmed"] is False and state(m) == "ready"
    assert m.store.events("host", "h1", limit=5)[-1]["type"] == "PowerFailed"
    assert m.store.get("hafence", "h1") is None  # unconfirmed: nothing may restart
