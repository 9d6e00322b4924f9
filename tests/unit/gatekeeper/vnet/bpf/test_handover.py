"""The TAP table a gatekeeper restarting in place hands its successor (handover.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.vnet.bpf import handover


@pytest.fixture(autouse=True)
def fresh_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(handover, "_inherited", None)
    monkeypatch.delenv(handover.ENV, raising=False)
    yield
    handover.close_rest()


NAMES = st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True)


@given(st.dictionaries(NAMES, st.integers(3, 10**9 - 1), max_size=8))
def test_the_table_round_trips_through_the_environment(taps: dict[str, int]) -> None:
    value = ",".join(f"{n}={fd}" for n, fd in sorted(taps.items()))
    assert handover.parse(value) == taps


@given(st.text(max_size=60))
def test_any_value_parses_to_names_and_descriptors_or_nothing(value: str) -> None:
    for name, fd in handover.parse(value).items():
        assert 1 <= len(name) <= 15 and fd >= 3


def test_bad_items_are_skipped() -> None:
    assert handover.parse("vntap1=7,junk,vntap2=1,=9,vntap3=x,vntap4=12") == {"vntap1": 7, "vntap4": 12}


def test_a_handed_over_descriptor_is_taken_once_and_not_inherited_further(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    try:
        env = handover.env_for({"vntap9": r})
        assert os.get_inheritable(r) and env[handover.ENV] == f"vntap9={r}"
        monkeypatch.setenv(handover.ENV, env[handover.ENV] + ",vntap8=999999")
        assert handover.take("vntap9") == r and not os.get_inheritable(r)
        assert handover.take("vntap9") is None  # once
        assert handover.take("vntap8") is None  # not open: the TAP is opened anew
        assert handover.ENV not in os.environ  # not handed on to children
    finally:
        os.close(r)
        os.close(w)


def test_descriptors_nobody_takes_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    monkeypatch.setenv(handover.ENV, f"vntap5={r}")
    assert handover.close_rest() == ["vntap5"]
    with pytest.raises(OSError):
        os.fstat(r)
    os.close(w)
