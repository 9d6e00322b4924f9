"""`softudc host drain|undrain` through the manager's app: a refused drain names the VMs, a drain
starts and --wait follows it ("1/2 moved") to maintenance, undrain brings the host back."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from softudc.cli import drain as cli
from softudc.cli.errors import CliError
from softudc.cli.main import build_parser
from softudc.manager import drain
from softudc.manager.api import make_app
from softudc.manager.auth import TokenStore
from tests.unit.cli.test_top import Api
from tests.unit.manager.test_drain import busiest, report, world


def test_drain_refused_then_done_then_undrain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(drain, "_keep_stepping", lambda *a: None)
    m = world(tmp_path, ("h1", "h2", "h3"))
    token = TokenStore(tmp_path / "tokens.json").create("admin2", "admin")
    host = busiest(m)
    with TestClient(make_app(m), base_url="https://testserver") as client:
        monkeypatch.setattr("softudc.cli.drain.connect", lambda _: Api(client, token))
        a = build_parser().parse_args(["host", "drain", host])
        with pytest.raises(CliError) as e:
            a.fn(a)
        assert "no host can take it" in str(e.value) and "nothing was moved" in str(e.value)
        for h in ("h4", "h5"):
            m.store.put("host", h, {"joined": time.time()})
            report(m, h, [])
        a.fn(a)
        assert capsys.readouterr().out.startswith(f"{host}: draining, 0/2 moved, moving: demo/")
        u = build_parser().parse_args(["host", "undrain", host])
        u.fn(u)
        assert capsys.readouterr().out.strip() == f"{host}: ready"
    m.close()


def test_wait_follows_the_progress_until_maintenance(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    steps = iter([{"host": "h1", "state": "draining", "total": 2, "moved": 1, "moving": ["f/b"], "left": ["f/b"]},
                  {"host": "h1", "state": "maintenance", "total": 2, "moved": 2, "moving": [], "left": []}])

    class Fake:
        def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
            return 200, next(steps)

    monkeypatch.setattr("softudc.cli.drain.connect", lambda _: Fake())
    a = argparse.Namespace(name="h1", timeout=60.0)
    first = {"host": "h1", "state": "draining", "total": 2, "moved": 0, "moving": ["f/a"], "left": ["f/a", "f/b"]}
    done = cli.follow(a, first, sleep=lambda s: None)
    assert done["state"] == "maintenance"
    err = capsys.readouterr().err
    assert "0/2 moved" in err and "1/2 moved" in err
    clock = iter([0.0, 100.0])
    with pytest.raises(CliError) as e:
        cli.follow(argparse.Namespace(name="h1", timeout=60.0), first, clock=lambda: next(clock), sleep=lambda s: None)
    assert "0/2 moved" in str(e.value) and "f/a, f/b" in str(e.value)


def test_power_off_refused_by_a_manager_that_ignores_it_and_followed_until_off(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    maint = {"host": "h1", "state": "maintenance", "total": 0, "moved": 0, "moving": [], "left": []}
    answers = iter([maint])

    class Fake:
        def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
            assert method == "GET" or body == '{"power_off": true}'
            return 200, next(answers)

    monkeypatch.setattr("softudc.cli.drain.connect", lambda _: Fake())
    a = build_parser().parse_args(["host", "drain", "h1", "--power-off"])
    with pytest.raises(CliError, match="ignored --power-off"):
        a.fn(a)
    answers = iter([{**maint, "power_off": True}, {**maint, "power_off": True, "power": "off"}])
    a = build_parser().parse_args(["host", "drain", "h1", "--power-off", "--wait"])
    monkeypatch.setattr("softudc.cli.drain.time.sleep", lambda s: None)
    a.fn(a)
    assert capsys.readouterr().out.strip() == "h1: maintenance, 0/0 moved, power off"
    answers = iter([{**maint, "power_off": True, "power": "failed", "power_reason": "not confirmed off"}])
    with pytest.raises(CliError, match="drained but not powered off: not confirmed off"):
        a.fn(a)
