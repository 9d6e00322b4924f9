"""The console's metrics in the manager's registry: sessions and streams counted, one collector
however many apps serve the Manager."""

from __future__ import annotations

from prometheus_client import generate_latest

from softudc.console import stream
from softudc.manager.api import make_app
from tests.unit.console.test_views import Lab


def sample(lab: Lab, name: str) -> float:
    for metric in lab.m.registry.collect():
        for s in metric.samples:
            if s.name == name:
                return float(s.value)
    raise AssertionError(f"no {name}")


def test_sessions_and_streams_are_counted(lab: Lab) -> None:
    assert sample(lab, "softudc_console_sessions") == 0
    lab.client(lab.admin)
    lab.client(lab.viewer)
    assert sample(lab, "softudc_console_sessions") == 2
    lab.app.state.console_streams = stream.MAX_STREAMS
    assert sample(lab, "softudc_console_streams") == stream.MAX_STREAMS
    assert sample(lab, "softudc_console_store_reads_total") == 0


def test_a_second_app_for_the_same_manager_registers_nothing_twice(lab: Lab) -> None:
    app = make_app(lab.m)  # as a bench does: no "Duplicated timeseries"
    app.state.console_streams = 3
    assert sample(lab, "softudc_console_streams") == 3  # the newest app's console
    assert generate_latest(lab.m.registry).count(b"# TYPE softudc_console_streams gauge") == 1
