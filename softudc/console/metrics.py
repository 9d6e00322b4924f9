"""The console's Prometheus metrics, in the manager's registry: open event streams, open sessions,
and the store revision reads of the app's watcher (one per tick for every stream together).

    softudc_console_streams            gauge    event streams open now (at most stream.MAX_STREAMS)
    softudc_console_sessions           gauge    console sessions held in memory
    softudc_console_store_reads_total  counter  revision reads by the streams' watcher
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from softudc.manager.service import Manager


class ConsoleCollector(Collector):
    """Reads the state of the app it was last attached to (a Manager may be served by a new app,
    as tests and benches do: one collector per Manager, never two in its registry)."""

    def __init__(self) -> None:
        self.state: Any = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self.state
        streams = GaugeMetricFamily("softudc_console_streams", "Console event streams open now")
        streams.add_metric([], float(getattr(state, "console_streams", 0)))
        yield streams
        sessions = getattr(state, "console_sessions", None)
        count = GaugeMetricFamily("softudc_console_sessions", "Console sessions held in memory")
        count.add_metric([], float(sessions.count() if sessions is not None else 0))
        yield count
        watcher = getattr(state, "console_watcher", None)
        reads = CounterMetricFamily("softudc_console_store_reads", "Store revision reads by the console's "
                                    "watcher, one per tick for every open stream together")
        reads.add_metric([], float(watcher.reads if watcher is not None else 0))
        yield reads


def attach(m: Manager, state: Any) -> None:
    """Count the console of the app whose state this is in `m`'s registry."""
    collector: ConsoleCollector | None = m.__dict__.get("console_collector")
    if collector is None:
        collector = m.__dict__["console_collector"] = ConsoleCollector()
        m.registry.register(collector)
    collector.state = state
