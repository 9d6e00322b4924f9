import pytest

from softudc.cli.errors import CliError
from softudc.cli.follow import Progress, follow_progress


def _states(*states: str) -> tuple[list[Progress], list[float]]:
    return [{"state": s, "n": i} for i, s in enumerate(states)], []


def test_it_fetches_until_the_operation_is_over(capsys: pytest.CaptureFixture[str]) -> None:
    seen, slept = _states("running", "running", "done")
    left = iter(seen[1:])
    out = follow_progress(seen[0], lambda: next(left), lambda p: p["state"] == "running", lambda p: f"step {p['n']}",
                          60, lambda p: "", clock=lambda: 0.0, sleep=slept.append)
    assert out == seen[2] and slept == [1.0, 1.0]
    assert "step 1" in capsys.readouterr().err


def test_it_stops_waiting_after_the_timeout_saying_how_to_follow_again() -> None:
    times = iter([0.0, 5.0, 11.0])
    with pytest.raises(CliError, match=r"^step 0 after 10 s \(it goes on\)$"):
        follow_progress({"n": 0}, lambda: {"n": 0}, lambda p: True, lambda p: f"step {p['n']}", 10,
                        lambda p: " (it goes on)", clock=lambda: next(times), sleep=lambda s: None)
