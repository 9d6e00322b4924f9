"""The volume-move bench's parsing and arithmetic (the lab part runs in `softudc bench volumes`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from softudc.bench.volume_move import inflation_pct, latency_ms


def test_diskrate_answers_are_read_as_ms_per_read() -> None:
    assert latency_ms("ops=100 ms=250") == 2.5
    assert latency_ms("ops=0 ms=10") is None
    assert latency_ms("no virtio disk") is None
    assert latency_ms("ops=x ms=1") is None


@given(st.text(max_size=40))
def test_any_answer_is_a_latency_or_none(text: str) -> None:
    got = latency_ms(text)
    assert got is None or got >= 0 or "-" in text


def test_inflation_is_the_mean_during_over_before() -> None:
    assert inflation_pct(2.0, [3.0, 3.0]) == 50.0
    assert inflation_pct(2.0, [1.0]) == -50.0
    assert inflation_pct(None, [1.0]) is None and inflation_pct(1.0, []) is None
