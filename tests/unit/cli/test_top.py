"""`softudc top hosts|vms` through the manager's app (TestClient): tables and JSON, --watch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from softudc.cli.main import build_parser
from softudc.cli.top import cmd_top
from softudc.manager.api import make_app
from softudc.manager.service import Manager, init
from tests.unit.manager.test_load import a_load
from tests.unit.manager.test_loop import FakeStore


class Api:
    """The CLI's Api over the manager's application, with an admin token."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client, self.token = client, token

    def hint(self) -> str:
        return ""

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        r = self.client.request(method, path, content=body, headers={"Authorization": f"Bearer {self.token}"})
        return r.status_code, r.json()


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    token = init(tmp_path, ["127.0.0.1"])
    store = FakeStore()
    m = Manager(tmp_path, store=store)
    store.put("host", "h1", {"joined": time.time(), "certificate": "f1"})
    m.host_status("h1", "h1", {"vcpus": 4, "memory_mib": 2048, "running": ["web--a"], "load": a_load(time.time(), 1.0)})
    with TestClient(make_app(m), base_url="https://testserver") as client:
        a = Api(client, token)
        monkeypatch.setattr("softudc.cli.top.connect", lambda _: a)
        yield a
    m.close()
    m.close_hosts()


def test_top_hosts_shows_used_of_capacity(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    a = build_parser().parse_args(["top", "hosts"])
    a.fn(a)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["HOST", "STATE", "CPU"]
    row = lines[1].split()
    assert row[:-1] == ["h1", "ready", "1.00/4", "25%", "512/2048", "25%", "1"]
    assert row[-1] in ("0s", "1s", "2s")  # the sample's age: seconds since the fixture reported it (a slow CI)


def test_top_vms_json_and_watch(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    a = build_parser().parse_args(["top", "vms", "-o", "json"])
    a.fn(a)
    rows = json.loads(capsys.readouterr().out)
    assert [(r["vm"], r["host"], r["cpu_cores"]["short"]) for r in rows] == [("web--a", "h1", 1.0)]
    w = build_parser().parse_args(["top", "vms", "--watch", "0.5"])
    ticks: list[float] = []

    def sleep(s: float) -> None:
        ticks.append(s)
        if len(ticks) == 2:
            raise KeyboardInterrupt

    cmd_top(w, sleep=sleep)
    out = capsys.readouterr().out
    assert ticks == [0.5, 0.5] and out.count("web--a") == 2 and "every 0.5 s" in out
