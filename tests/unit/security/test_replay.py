from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from softudc.security.replay import ReplayWindow


def receive(w: ReplayWindow, seq: int) -> str | None:
    """What a receiver does: infer, check, verify the ICV (which fails unless the inferred high
    bits are the sender's, because they are part of the AAD), then record."""
    full = w.infer(seq & 0xFFFFFFFF)
    why = w.check(full)
    if why is None and full != seq:
        return "auth_failed"
    if why is None:
        w.update(full)
    return why


def test_in_order_then_replay_then_too_old() -> None:
    w = ReplayWindow(size=64)
    for s in range(1, 200):
        assert receive(w, s) is None
    assert receive(w, 150) == "replay"
    assert receive(w, 100) == "auth_failed"  # taken for 2^32 + 100; the ICV refuses it
    assert receive(w, 136) == "replay"  # the oldest number the window tracks
    assert receive(w, 135) == "auth_failed"  # just below it


def test_reordering_inside_the_window_is_accepted_once() -> None:
    w = ReplayWindow(size=64)
    for s in (10, 8, 9, 5, 64):
        assert receive(w, s) is None
    assert receive(w, 9) == "replay"
    assert receive(w, 1) is None  # offset 63: the oldest number the window still tracks
    assert receive(w, 66) is None
    assert receive(w, 2) is not None  # offset 64: outside the window, refused

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
        if receive(w, s) is None:
            assert s not in accepted
            accepted.add(s)
