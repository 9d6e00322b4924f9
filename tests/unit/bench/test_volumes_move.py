"""The move part of softudc bench volumes against a scripted manager and guest: rates from the copy's
own time, latency inflation from the probes taken while copying, a failed move said as such."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from softudc.bench import volumes_move
from softudc.bench.volumes_move import inflation_pct, measure_moves, probe_latency_ms


class Manager:
    """Each move: requested, then copying for `copy_s`, then done; `fail` moves end failed."""

    def __init__(self, copy_s: float, fail: bool = False) -> None:
        self.copy_s, self.fail = copy_s, fail
        self.posted: list[dict[str, Any]] = []
        self.t0 = 0.0

    def __call__(self, method: str, path: str, body: str | None) -> Any:
        assert path == "/v1/volumes/v/move"
        if method == "POST":
            assert body is not None
            self.posted.append(json.loads(body))
            self.t0 = time.monotonic()
            return {}
        age = time.monotonic() - self.t0
        if age < 0.1:
            return {"state": "requested"}
        if age < 0.1 + self.copy_s:
            return {"state": "copying", "end_bytes": 8_000_000}
        return {"state": "failed", "error": "boom"} if self.fail else {"state": "done", "end_bytes": 8_000_000}


def guest(ms: int) -> Any:
    return lambda q: f"ops={q.split('=')[1]} ms={ms}"


def test_each_move_goes_back_and_forth_and_is_measured(monkeypatch: Any) -> None:
    monkeypatch.setattr(volumes_move, "POLL_S", 0.02)
    api = Manager(copy_s=0.4)
    got = measure_moves(api, "v", ("h2", "h3"), guest(300))
    assert [p["to"] for p in api.posted] == ["h3", "h2", "h3"]
    assert [p.get("limit_mbps") for p in api.posted] == [10, 40, None] and api.posted[2]["adaptive"] is True
    for m in got:
        assert m["state"] == "done" and m["copy_s"] is not None and 0.3 < m["copy_s"] < 1.5
        assert abs(m["achieved_mbps"] - 8 / m["copy_s"]) < 0.05 * m["achieved_mbps"]  # the copy time, not the total
        assert m["guest_latency_inflation_pct"] in (0.0, None)  # the same guest timing before and during


def test_a_failed_move_keeps_its_error(monkeypatch: Any) -> None:
    monkeypatch.setattr(volumes_move, "POLL_S", 0.02)
    got = measure_moves(Manager(copy_s=0.1, fail=True), "v", ("h2", "h3"), guest(300))
    assert all(m["state"] == "failed" and m["error"] == "boom" for m in got)


def test_probe_answers() -> None:
    assert probe_latency_ms(lambda q: "ops=300 ms=600") == 2.0
    assert probe_latency_ms(lambda q: "") is None and probe_latency_ms(lambda q: "no virtio disk") is None


@given(st.floats(0.01, 100), st.lists(st.floats(0.01, 100), max_size=20))
def test_inflation_is_relative_to_before(before: float, during: list[float]) -> None:
    got = inflation_pct(before, during)
    if not during:
        assert got is None
    else:
        mean = sum(during) / len(during)
        assert got is not None and got == round((mean / before - 1) * 100, 1)


def test_a_move_asked_while_the_last_one_settles_is_asked_again(monkeypatch: Any) -> None:
    monkeypatch.setattr(volumes_move, "POLL_S", 0.02)
    monkeypatch.setattr("softudc.bench.volumes_move.time.sleep", lambda s: None)
    api, refusals = Manager(copy_s=0.05), [2]

    def settling(method: str, path: str, body: str | None) -> Any:
        if method == "POST" and refusals[0] > 0:
            refusals[0] -= 1
            raise RuntimeError("POST: 409 volume v is planned on h3, not held and exported yet")
        return api(method, path, body)

    got = measure_moves(settling, "v", ("h2", "h3"), guest(300))
    assert [m["state"] for m in got] == ["done"] * 3 and len(api.posted) == 3


def test_a_refused_move_is_said_and_ends_the_series(monkeypatch: Any) -> None:
    def refusing(method: str, path: str, body: str | None) -> Any:
        raise RuntimeError("POST: 409 volume v is encrypted")

    got = measure_moves(refusing, "v", ("h2", "h3"), guest(300))
    assert got == [{"limit_mbps": 10, "to": "h3", "state": "refused", "error": "POST: 409 volume v is encrypted"}]
