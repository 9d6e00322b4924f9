"""`softudc get volumes` rows and the create/clone/snapshot requests' output."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from softudc.cli import volume_ops
from softudc.cli.volume import add_volume_parser
from softudc.cli.volume_ops import volume_rows

ROWS = [{"id": "gold", "class": "master", "size_bytes": 1 << 30, "from": "empty", "host": "h2", "state": "held",
         "allowed": [], "depth": 2, "snapshots": ["v1"], "reason": ""}]


class FakeApi:
    hint = "--manager fake"

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, str | None]] = []

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        self.calls.append((method, path, body))
        return 200, self.answer


def test_get_volumes_lists_every_volume_with_its_size_in_descriptor_units() -> None:
    rows, columns, wide = volume_rows(FakeApi(ROWS))
    assert rows[0]["size"] == "1Gi" and columns == ["id", "class", "size", "from", "host", "state"]
    assert "depth" in wide and "snapshots" in wide


def test_clone_and_snapshot_say_what_they_made(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi({"host": "h2", "depth": 3, "flatten": True})
    monkeypatch.setattr(volume_ops, "connect", lambda a: api)
    p = argparse.ArgumentParser()
    add_volume_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["volume", "clone", "gold@v1", "b1"])
    a.fn(a)
    assert api.calls == [("POST", "/v1/volumes", '{"name": "b1", "from": "gold@v1"}')]
    assert "volume b1: a clone of gold@v1 on h2, chain depth 3 (at the soft depth limit" in capsys.readouterr().out
    a = p.parse_args(["volume", "snapshot", "shop--db-0--data", "s1"])
    a.fn(a)
    assert api.calls[-1][:2] == ("POST", "/v1/volumes/shop--db-0--data/snapshots")
    assert "clone it with `softudc volume clone shop--db-0--data@s1 NEW`" in capsys.readouterr().out
