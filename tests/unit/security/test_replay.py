from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from softudc.security.replay import ReplayWindow


def receive(w: ReplayWindow, seq: int) -> str | None:
    full = w.infer(seq & 0xFFFFFFFF)
    why = w.check(full)
    if why is None:
        w.update(full)
    return why


def test_in_order_then_replay_then_too_old() -> None:
    w = ReplayWindow(size=64)
    for s in range(1, 200):
        assert receive(w, s) is None
    assert receive(w, 150) == "replay"
    assert receive(w, 100) == "too_old"


def test_reordering_inside_the_window_is_accepted_once() -> None:
    w = ReplayWindow(size=64)
    for s in (10, 8, 9, 5, 64):
        assert receive(w, s) is None
    assert receive(w, 9) == "replay"
    assert receive(w, 1) is None  # offset 63: the oldest number the window still tracks
    assert receive(w, 66) is None
    assert receive(w, 2) == "too_old"  # offset 64: outside

def test_esn_high_bits_are_inferred_across_the_wrap() -> None:
    w = ReplayWindow(size=1024)
    start = (1 << 32) - 5
    for s in range(start, start + 10):
        assert w.infer(s & 0xFFFFFFFF) == s
        assert receive(w, s) is None
    assert w.top == start + 9 and w.top >> 32 == 1
    # A late packet from just before the wrap is still placed in the old subspace.
    assert w.infer(((1 << 32) - 3) & 0xFFFFFFFF) == (1 << 32) - 3


@given(st.lists(st.integers(1, 5000), max_size=300))
def test_never_accepts_a_number_twice(seqs: list[int]) -> None:
    w = ReplayWindow(size=128)
    accepted: set[int] = set()
    for s in seqs:
        full = w.infer(s)
        if w.check(full) is None:
            assert full not in accepted
            accepted.add(full)
            w.update(full)
