"""Problems put at their lines: every problem is shown exactly once, at its line if it names one
of the text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from softudc.console.editor import annotate


def test_problems_land_at_their_lines() -> None:
    lines, loose = annotate("a: 1\nb: x\n", ["farms/f:2:4: b: must be an integer", "farms/f:9:1: past the end",
                                            "no position at all"])
    assert [ln.problems for ln in lines] == [[], ["farms/f:2:4: b: must be an integer"]]
    assert loose == ["farms/f:9:1: past the end", "no position at all"]


@given(st.text(max_size=200), st.lists(st.tuples(st.integers(0, 30), st.integers(1, 9), st.text(max_size=20))))
def test_every_problem_is_shown_once(text: str, raw: list[tuple[int, int, str]]) -> None:
    problems = [f"farms/x:{n}:{c}: {m}" for n, c, m in raw]
    lines, loose = annotate(text, problems)
    shown = [p for ln in lines for p in ln.problems] + loose
    assert sorted(shown) == sorted(problems)
    assert [ln.number for ln in lines] == list(range(1, len(lines) + 1))
