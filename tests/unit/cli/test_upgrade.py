"""`softudc host upgrade` follows the rollout (a line per phase change) to its end; a failed one is
a CliError naming the host and why; upgrade-status lists and shows them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from softudc.cli import upgrade
from softudc.cli.errors import CliError
from softudc.cli.main import build_parser


def rollout(state: str, phases: dict[str, str], reason: str = "") -> dict[str, Any]:
    return {"name": "r1", "hosts": list(phases), "state": state, "reason": reason, "max_unavailable": 1,
            "progress": {h: {"phase": p, **({"reason": "script: exited 3"} if p == "failed" else {})}
                         for h, p in phases.items()}}


class Fake:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers, self.calls = iter(answers), []  # type: ignore[var-annotated]

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        self.calls.append((method, path, body))
        return 200, next(self.answers)


def test_upgrade_follows_to_the_end_and_a_failure_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "up.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    fake = Fake([rollout("running", {"h1": "pending", "h2": "pending"}),
                 rollout("running", {"h1": "script", "h2": "pending"}),
                 rollout("done", {"h1": "done", "h2": "done"}, "all 2 host(s) done")])
    monkeypatch.setattr("softudc.cli.upgrade.connect", lambda _: fake)
    monkeypatch.setattr("softudc.cli.upgrade.time.sleep", lambda s: None)
    a = build_parser().parse_args(["host", "upgrade", "--hosts", "h*", "--run", str(script)])
    a.fn(a)
    out = capsys.readouterr()
    assert out.out.strip() == "rollout r1: done: all 2 host(s) done"
    assert "h1: script" in out.err and "h2: done" in out.err
    assert '"script": "#!/bin/sh\\necho hi\\n"' in fake.calls[0][2] and '"script_name": "up.sh"' in fake.calls[0][2]
    fake = Fake([rollout("running", {"h1": "pending"}), rollout("failed", {"h1": "failed"}, "h1: script: exited 3")])
    monkeypatch.setattr("softudc.cli.upgrade.connect", lambda _: fake)
    with pytest.raises(CliError, match="stopped: h1: script: exited 3; the failed host is left drained"):
        a.fn(a)
    with pytest.raises(CliError, match="--run /nope"):
        b = build_parser().parse_args(["host", "upgrade", "--hosts", "all", "--run", "/nope"])
        b.fn(b)


def test_upgrade_status_lists_and_shows(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    failed = rollout("failed", {"h1": "done", "h2": "failed"}, "h2: script: exited 3")
    monkeypatch.setattr("softudc.cli.upgrade.connect", lambda _: Fake([[failed]]))  # type: ignore[list-item]
    a = build_parser().parse_args(["host", "upgrade-status"])
    a.fn(a)
    assert capsys.readouterr().out.strip() == "r1: failed (h1, h2): h2: script: exited 3"
    monkeypatch.setattr("softudc.cli.upgrade.connect", lambda _: Fake([failed]))
    a = build_parser().parse_args(["host", "upgrade-status", "r1"])
    a.fn(a)
    assert capsys.readouterr().out.splitlines()[1:] == ["  h1: done", "  h2: failed (script: exited 3)"]
    clock = iter([0.0, 100.0, 100.0])
    monkeypatch.setattr("softudc.cli.upgrade.connect", lambda _: Fake([rollout("running", {"h1": "script"})]))
    with pytest.raises(CliError, match="still running after 60 s"):
        upgrade.follow(argparse.Namespace(timeout=60.0), "r1", clock=lambda: next(clock), sleep=lambda s: None)


def test_upgrade_stop(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stopped = rollout("stopped", {"h1": "script"}, "stopped by admin; left after their current phase: h1 (script)")
    fake = Fake([stopped])
    monkeypatch.setattr("softudc.cli.upgrade.connect", lambda _: fake)
    a = build_parser().parse_args(["host", "upgrade-stop", "r1"])
    a.fn(a)
    assert fake.calls == [("POST", "/v1/rollouts/r1/stop", "{}")]
    assert capsys.readouterr().out.strip() == f"rollout r1: stopped: {stopped['reason']}"
    with pytest.raises(CliError, match="was stopped"):
        upgrade._ended(stopped)
