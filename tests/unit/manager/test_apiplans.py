"""The plan routes: admin only, a bad body refused, a dry run listed and shown, run, 404 for none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from softudc.manager.api import make_app
from softudc.manager.auth import TokenStore
from tests.unit.manager.test_plans import busy_world


def test_plan_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = busy_world(tmp_path, monkeypatch)
    tokens = TokenStore(tmp_path / "tokens.json")
    admin, viewer = tokens.create("admin2", "admin"), tokens.create("v", "viewer", ["demo"])
    with TestClient(make_app(m), base_url="https://testserver") as client:

        def call(method: str, path: str, token: str = admin, **kw: Any) -> tuple[int, Any]:
            r = client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
            return r.status_code, r.json()

        assert call("GET", "/v1/plans", viewer)[0] == 403
        assert call("POST", "/v1/plans", json={"max_per_step": 0})[0] == 400
        status, body = call("POST", "/v1/plans", json={"kind": "rebalance", "dry_run": True})
        assert status == 200 and body["state"] == "planned" and body["moves"], body
        listed = call("GET", "/v1/plans")[1]
        assert [p["id"] for p in listed] == [body["id"]] and listed[0]["moves"] == len(body["moves"])
        assert call("GET", f"/v1/plans/{body['id']}")[1]["fingerprint"] == body["fingerprint"]
        assert call("GET", "/v1/plans/nope")[0] == 404
        assert [e["type"] for e in call("GET", f"/v1/plans/{body['id']}/events")[1]] == ["Planned"]
        status, ran = call("POST", f"/v1/plans/{body['id']}/run")
        assert status == 200 and ran["state"] == "running" and ran["progress"]["moving"] >= 1, ran
    m.close()
