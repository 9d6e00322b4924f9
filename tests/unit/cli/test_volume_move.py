"""`softudc volume move`: its parser, the progress line, following a move until it ends."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from softudc.cli import volume_move
from softudc.cli.errors import CliError
from softudc.cli.volume import add_volume_parser, describe_text

MOVE = {"id": "m1", "volume": "shop--db-0--data", "from": "h2", "to": "h3", "limit_mbps": 8, "adaptive": False,
        "max_latency_inflation_pct": 50, "requested_at": 1.0, "state": "requested"}


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_volume_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["volume", "move", "shop--db-0--data", *argv])


def test_the_parser_takes_a_limit_or_adaptive_not_both() -> None:
    a = parse("--to", "h3", "--limit-mbps", "8")
    assert (a.to, a.limit_mbps, a.adaptive, a.wait, a.fn.__name__) == ("h3", 8, False, True, "cmd_volume_move")
    b = parse("--to", "h3", "--adaptive", "--max-latency-inflation", "20", "--no-wait")
    assert (b.adaptive, b.max_latency_inflation, b.wait) == (True, 20, False)
    with pytest.raises(SystemExit):
        parse("--to", "h3", "--adaptive", "--limit-mbps", "8")


def test_the_line_says_progress_rate_limit_and_latency() -> None:
    m = {**MOVE, "state": "copying", "cur_bytes": 32_000_000, "end_bytes": 64_000_000, "rate_bps": 7_900_000}
    assert volume_move.line(m) == ("shop--db-0--data: h2 -> h3 copying, 32.0/64.0 MB (50 %), 7.9 MB/s, "
                                   "limit 8 MB/s")
    a = {**MOVE, "limit_mbps": None, "adaptive": True, "speed_bps": 24_000_000, "latency_inflation_pct": 12.0}
    assert volume_move.line(a).endswith("adaptive (now 24 MB/s), guest latency +12 %")
    assert "move:         shop--db-0--data: h2 -> h3 requested" in describe_text(
        {"id": "x", "size_bytes": 1 << 20, "allowed": [], "move": MOVE})


class Api:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers, self.calls = answers, []  # type: ignore[var-annotated]

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, dict[str, Any]]:
        self.calls.append((method, path, json.loads(body) if body else None))
        return 200, self.answers.pop(0)


def test_move_posts_then_follows_until_done(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    api = Api([MOVE, {**MOVE, "state": "copying", "cur_bytes": 1, "end_bytes": 2}, {**MOVE, "state": "done"}])
    monkeypatch.setattr("softudc.cli.volume_move.connect", lambda _: api)
    monkeypatch.setattr("softudc.cli.volume_move.time.sleep", lambda s: None)
    a = parse("--to", "h3", "--limit-mbps", "8")
    a.fn(a)
    assert api.calls[0] == ("POST", "/v1/volumes/shop--db-0--data/move", {"to": "h3", "limit_mbps": 8})
    assert [c[:2] for c in api.calls[1:]] == [("GET", "/v1/volumes/shop--db-0--data/move")] * 2
    out = capsys.readouterr()
    assert "copying, 0.0/0.0 MB (50 %)" in out.err
    assert out.out.strip() == "shop--db-0--data: h2 -> h3 done, limit 8 MB/s"


def test_a_failed_move_is_an_error_saying_the_volume_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api([{**MOVE, "state": "failed", "error": "no TLS"}])
    monkeypatch.setattr("softudc.cli.volume_move.connect", lambda _: api)
    a = parse("--to", "h3", "--adaptive")
    with pytest.raises(CliError, match="no TLS; the volume stays where it was"):
        a.fn(a)
    assert api.calls[0][2] == {"to": "h3", "adaptive": True, "max_latency_inflation_pct": 50}
