"""The rollout routes: admin only, a bad request refused with nothing stored, a rollout started
through POST followed with GET to its end (the leader's pass resumes it: make_app wires the hook)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from softudc.manager import rollout
from softudc.manager.api import make_app
from softudc.manager.auth import TokenStore
from tests.unit.manager.test_rollout import manager


def test_rollout_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, fakes, _ = manager(tmp_path, monkeypatch, ("h1", "h2"), {})
    tokens = TokenStore(tmp_path / "tokens.json")
    admin, viewer = tokens.create("admin2", "admin"), tokens.create("v", "viewer", ["demo"])
    with TestClient(make_app(m), base_url="https://testserver") as client:
        m.__dict__["power_drivers"] = lambda config: fakes[config["host"]]  # make_app set the real factory

        def call(method: str, path: str, token: str = admin, **kw: Any) -> tuple[int, Any]:
            r = client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
            return r.status_code, r.json()

        assert call("GET", "/v1/rollouts", viewer)[0] == 403
        status, body = call("POST", "/v1/rollouts", json={"hosts": "z*", "script": "#!/bin/sh\n"})
        assert status == 400 and "'z*' names no joined host" in str(body), body
        status, body = call("POST", "/v1/rollouts", json={"hosts": "all", "script": "x", "max_unavailable": 0})
        assert status == 400, body
        assert call("GET", "/v1/rollouts")[1] == []
        status, body = call("POST", "/v1/rollouts", json={"name": "up1", "hosts": "h1,h2", "script": "#!/bin/sh\n",
                                                          "script_name": "up.sh"})
        assert status == 200 and isinstance(body, dict) and body["name"] == "up1" and "script" not in body, body
        deadline = time.monotonic() + 30
        while call("GET", "/v1/rollouts/up1")[1]["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = call("GET", "/v1/rollouts/up1")
        assert status == 200 and isinstance(body, dict) and body["state"] == "done", body
        assert [r["name"] for r in call("GET", "/v1/rollouts")[1]] == ["up1"]
        assert call("GET", "/v1/rollouts/nope")[0] == 404
    assert m.store.get(rollout.KIND, "up1") is not None
    m.close()
