"""Each host's load (issue 12) as the manager keeps it, apart from its report.

A gatekeeper's report carries `load` (hoststate.HostLoad), which changes at every report. Were it
compared with the stored report, no report would be a heartbeat and every one would be a store
write (hosts.py, fastpath.py). So the report's `load` is split off first (`split_load`) and handed
to this manager's LoadView, in memory; the rest is compared and stored as before.

The view is written to the store by a small thread, one object of kind `load` per manager (named
by its id, like the heartbeats), at most every FLUSH_EVERY_S when something changed: the leader,
which runs the balancer, may not be the manager a host reports to. `load_of(store)` merges every
manager's object, the newest sample of each host winning, and says how old each one is (`age_s`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from softudc.manager.flushing import FlushedBook
from softudc.manager.store import Store
from softudc.model.hoststate import HostLoad, problems_of

log = logging.getLogger("softudc.manager.load")

KIND = "load"  # one object per manager, named by its id
FLUSH_EVERY_S = 20.0  # a changed view is written at most this often
STALE_S = 600.0  # a sample this old is no longer shown (its host stopped reporting long ago)


def split_load(body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The report without its `load`, and the load (None when it has none). `body` is not changed."""
    if "load" not in body:
        return body, None
    rest = dict(body)
    return rest, rest.pop("load")


class LoadView(FlushedBook):
    """The latest load of each host that reports to this manager; flushed by a thread started by
    the first `note`; `close()` flushes what is left."""

    what = "the load view"

    def __init__(self, store: Store, manager_id: str, every_s: float = FLUSH_EVERY_S) -> None:
        super().__init__(manager_id, every_s)
        self.store = store
        self._lock = threading.Lock()
        self._loads: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self.flushes = 0  # objects written (tests count them)
        self.refused = 0  # loads that broke the contract (from a report taken as a heartbeat, unchecked)

    def note(self, host: str, load: Any, checked: bool = False) -> bool:
        """`host` reported `load`; False (and nothing kept) if it breaks the contract. A load from a
        report that was checked as a whole (`checked`) is not checked again."""
        if not checked and problems_of(HostLoad, load):
            self.refused += 1
            return False
        with self._lock:
            self._loads[host] = load
            self._dirty = True
            self._wake("load")
        return True

    def forget(self, host: str) -> None:
        with self._lock:
            if self._loads.pop(host, None) is not None:
                self._dirty = True

    def latest(self) -> dict[str, dict[str, Any]]:
        """What this manager holds now (flushed or not)."""
        with self._lock:
            return dict(self._loads)

    def flush(self) -> bool:
        """Write the view if it changed since the last flush; True if it wrote."""
        with self._lock:
            if not self._dirty:
                return False
            hosts, self._dirty = dict(self._loads), False
        try:
            self.store.put(KIND, self.manager_id, {"flushed": round(time.time(), 3), "hosts": hosts})
        except BaseException:
            with self._lock:
                self._dirty = True
            raise
        self.flushes += 1
        return True



def _entry(load: dict[str, Any], now: float) -> dict[str, Any]:
    at = float(load.get("at", 0.0))
    host = load.get("host", {})
    return {"at": at, "age_s": round(max(now - at, 0.0), 1), "samples": load.get("samples", 0),
            "cpu_cores": host.get("cpu_cores", {}), "memory_mib": host.get("memory_mib", {}),
            "vms": dict(load.get("vms", {}))}


def load_of(store: Store, now: float | None = None, extra: dict[str, dict[str, Any]] | None = None) \
        -> dict[str, dict[str, Any]]:
    """host -> {at, age_s, samples, cpu_cores: {short, long}, memory_mib: {short, long}, vms: {vm:
    {cpu_cores, memory_mib}}}: the newest sample of each host among every manager's written view
    (and `extra`, this manager's unwritten one), leaving out samples older than STALE_S."""
    now = time.time() if now is None else now
    newest: dict[str, dict[str, Any]] = {}
    views = [o.spec.get("hosts", {}) for o in store.objects(KIND)] + ([extra] if extra else [])
    for hosts in views:
        for host, load in hosts.items():
            if isinstance(load, dict) and float(load.get("at", 0.0)) > float(newest.get(host, {}).get("at", -1.0)):
                newest[host] = load
    return {h: _entry(v, now) for h, v in sorted(newest.items()) if now - float(v.get("at", 0.0)) <= STALE_S}


class LoadCollector(Collector):
    """Prometheus: softudc_host_cpu_cores{host,window}, softudc_host_memory_used_mib{host,window}
    and softudc_host_load_age_seconds{host} (from `load_of`), softudc_manager_load_refused (loads
    of reports taken as heartbeats that broke the contract)."""

    def __init__(self, store: Store, view: Callable[[], LoadView]) -> None:
        self.store, self.view = store, view

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        view = self.view()
        loads = load_of(self.store, extra=view.latest())
        cpu = GaugeMetricFamily("softudc_host_cpu_cores", "CPU cores the host's VMs use (means over 1 and 10 min)",
                                labels=["host", "window"])
        mem = GaugeMetricFamily("softudc_host_memory_used_mib", "Memory MiB the host's VMs hold (means)",
                                labels=["host", "window"])
        age = GaugeMetricFamily("softudc_host_load_age_seconds", "Age of the host's latest load sample",
                                labels=["host"])
        for host, load in loads.items():
            for window in ("short", "long"):
                cpu.add_metric([host, window], float(load["cpu_cores"].get(window, 0.0)))
                mem.add_metric([host, window], float(load["memory_mib"].get(window, 0.0)))
            age.add_metric([host], float(load["age_s"]))
        refused = CounterMetricFamily("softudc_manager_load_refused", "Loads refused for breaking the contract")
        refused.add_metric([], float(view.refused))
        yield from (cpu, mem, age, refused)
