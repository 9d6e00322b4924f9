"""`softudc rebalance`: the dry run prints each move with its reason and the scores; a run follows
the plan to its end (a failed one is an error naming the reason); --auto runs only worthwhile plans."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from softudc.cli.errors import CliError
from softudc.cli.rebalance import auto, describe, once, plan_rows

MOVE = {"vm": "demo/web-0", "source": "h1", "destination": "h4", "step": 0, "reason": "host h1 cpu 90%"}


def plan(state: str = "planned", done: int = 0, **kw: Any) -> dict[str, Any]:
    return {"id": "p1", "state": state, "moves": [dict(MOVE, state="done" if done else "pending")],
            "score_before": 0.5, "score_after": 0.1, "before": {"spread_cpu": 0.4}, "after": {"spread_cpu": 0.1},
            "stuck": {"demo/db-0": "in cooldown"}, "created": 0.0, "by": "admin",
            "progress": {"done": done, "moving": 1 - done, "failed": 0, "pending": 0}, **kw}


class FakeApi:
    hint = "--lab x"

    def __init__(self, answers: list[dict[str, Any] | list[Any]]) -> None:
        self.answers, self.calls = answers, list[tuple[str, str, Any]]()

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        self.calls.append((method, path, json.loads(body) if body else None))
        return 200, self.answers.pop(0)


def args(**kw: Any) -> argparse.Namespace:
    base = {"dry_run": False, "plan": None, "output": "text", "timeout": 60.0, "cooldown": None, "auto": None,
            "min_gain": 0.01, "max_per_source": None, "max_per_destination": None, "max_per_step": None,
            "max_moves": None}
    return argparse.Namespace(**{**base, **kw})


def test_a_dry_run_prints_moves_reasons_and_scores(capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi([plan()])
    once(api, args(dry_run=True, max_per_source=1))
    out = capsys.readouterr().out
    assert "score 0.5000 -> 0.1000" in out and "demo/web-0 h1 -> h4: host h1 cpu 90%" in out
    assert "stuck: demo/db-0: in cooldown" in out
    assert api.calls == [("POST", "/v1/plans", {"kind": "rebalance", "dry_run": True, "max_per_source": 1})]


def test_a_run_of_a_plan_follows_it_to_its_end(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("time.sleep", lambda s: None)
    api = FakeApi([plan("running"), plan("done", done=1)])
    assert once(api, args(plan="p1"))["state"] == "done"
    assert [c[:2] for c in api.calls] == [("POST", "/v1/plans/p1/run"), ("GET", "/v1/plans/p1")]
    assert "1/1 done" in capsys.readouterr().out
    with pytest.raises(CliError, match="stopped at a failed move: h4 said no"):
        once(FakeApi([plan("failed", reason="h4 said no")]), args(plan="p1"))


def test_auto_runs_only_plans_worth_it() -> None:
    small = plan(score_before=0.105)
    api = FakeApi([small, plan(), plan("done", done=1)])
    auto(api, args(auto=1.0, min_gain=0.05), rounds=2, sleep=lambda s: None)
    assert [c[:2] for c in api.calls] == [("POST", "/v1/plans"), ("POST", "/v1/plans"), ("POST", "/v1/plans/p1/run")]


def test_get_plans_rows() -> None:
    rows, cols, wide = plan_rows(FakeApi([[{**plan("done", done=1), "moves": 1}]]))
    assert rows[0]["score"] == "0.5000 -> 0.1000" and rows[0]["done"] == 1 and "id" in cols and "by" in wide
    assert describe(plan()).splitlines()[0].startswith("plan p1 (planned): 1 move(s)")
