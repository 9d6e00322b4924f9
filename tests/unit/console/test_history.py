"""The console's load history and sparkline scaling."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from softudc.console.history import LoadHistory, percent, sparkline


def fig(cpu: float, mem: float) -> dict[str, dict[str, float]]:
    return {"cpu_cores": {"short": cpu, "long": cpu}, "memory_mib": {"short": mem, "long": mem}}


def test_one_point_per_sample_time_and_at_most_points() -> None:
    h = LoadHistory(points=3)
    h.note("host/h1", 10.0, fig(1, 100))
    h.note("host/h1", 10.0, fig(2, 200))  # the same sample read again: nothing added
    h.note("host/h1", 9.0, fig(3, 300))  # older than the newest: ignored
    assert h.series("host/h1") == [(10.0, 1.0, 100.0)]
    for t in range(11, 15):
        h.note("host/h1", float(t), fig(t, t))
    assert [p[0] for p in h.series("host/h1")] == [12.0, 13.0, 14.0]


def test_malformed_figures_are_ignored_and_series_are_bounded() -> None:
    h = LoadHistory(max_series=2)
    h.note("a", "not a time", fig(1, 1))
    h.note("a", 1.0, {"cpu_cores": {}})
    assert h.series("a") == []
    for k in ("a", "b", "c"):
        h.note(k, 1.0, fig(1, 1))
    assert h.series("a") == [] and h.series("c") != []  # the least recently noted went first


def test_rows_of_the_load_routes() -> None:
    h = LoadHistory()
    h.note_hosts([{"host": "h1", "at": 5.0, **fig(0.5, 64)}, {"host": "h2"}])  # h2: no load yet
    h.note_vms([{"vm": "demo--web-0", "at": 5.0, **fig(0.25, 32)}])
    assert h.series("host/h1") == [(5.0, 0.5, 64.0)] and h.series("host/h2") == []
    assert h.series("vm/demo--web-0") == [(5.0, 0.25, 32.0)]


@given(st.lists(st.floats(min_value=-10, max_value=1e6, allow_nan=False), min_size=2, max_size=80),
       st.floats(min_value=0, max_value=1e5, allow_nan=False))
def test_sparkline_points_stay_in_the_box(values: list[float], top: float) -> None:
    pts = [tuple(map(float, p.split(","))) for p in sparkline(values, top, 120, 24).split()]
    assert len(pts) == len(values)
    assert pts[0][0] == 0 and abs(pts[-1][0] - 120) < 0.1
    assert all(0 <= y <= 24 for _, y in pts)


def test_sparkline_and_percent_edges() -> None:
    assert sparkline([1.0], 4) == ""
    assert sparkline([0.0, 4.0], 4, 10, 10) == "0.0,10.0 10.0,0.0"
    assert percent(1, 4) == 25 and percent(9, 4) == 100 and percent(1, 0) == 0 and percent(None, 4) == 0
