"""`softudc bench ha`'s pure parts: the summary of the runs (median, target) and the host to kill."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.bench.ha import TARGET_S, summary, victim, wait


def test_the_summary_is_the_median_of_the_runs_against_the_target() -> None:
    runs = [{"placed_s": 11.0, "answering_s": 25.0}, {"placed_s": 10.0, "answering_s": 19.0},
            {"placed_s": 12.0, "answering_s": 40.0}]
    s = summary(runs, 8.0)
    assert (s["runs"], s["median_s"], s["median_placed_s"], s["heartbeat_timeout_s"]) == (3, 25.0, 11.0, 8.0)
    assert s["met"] and s["target_s"] == TARGET_S and s["per_run"] == runs
    assert not summary([{"answering_s": 31.0}], 8.0)["met"]
    assert summary([], 8.0)["median_s"] is None and not summary([], 8.0)["met"]


def test_the_victim_holds_a_guest_and_is_never_the_endpoints_host() -> None:
    assert victim({"a-0": "h2", "a-1": "h3"}, keep="h2") == "h3"
    assert victim({"a-0": "h1", "a-1": "h3", "b-0": "h2"}, keep="h1") == "h2"
    with pytest.raises(RuntimeError, match="every guest runs on h1"):
        victim({"a-0": "h1", "a-1": "h1"}, keep="h1")


@given(st.dictionaries(st.sampled_from(["a-0", "a-1", "a-2"]), st.sampled_from(["h1", "h2", "h3"]), min_size=1),
       st.sampled_from(["h1", "h2", "h3"]))
def test_property_the_victim_is_a_guests_host_other_than_the_kept_one(placed: dict[str, str], keep: str) -> None:
    if set(placed.values()) <= {keep}:
        with pytest.raises(RuntimeError):
            victim(placed, keep)
    else:
        v = victim(placed, keep)
        assert v != keep and v in placed.values()


def test_wait_returns_the_seconds_or_names_what_it_waited_for() -> None:
    calls = iter([False, True])
    assert wait("x", lambda: next(calls), timeout=5, interval=0.01) < 1
    with pytest.raises(TimeoutError, match="the thing: not within 0 s"):
        wait("the thing", lambda: False, timeout=0.05, interval=0.01)
