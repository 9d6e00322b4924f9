"""Short histories of the load figures the manager reports, for the console's sparklines. The
manager keeps only each host's newest sample (softudc/manager/load.py); the console remembers the
last POINTS samples of each host and VM it has been shown, in memory (a restart starts afresh), one
point per distinct sample time, so a page read twice between two reports adds nothing."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

POINTS = 60  # samples kept per series (a report every ~10 s: ten minutes)
MAX_SERIES = 20_000  # hosts and VMs remembered at most; the least recently noted go first


class LoadHistory:
    """key -> the last POINTS (at, cpu_cores, memory_mib) of that host or VM."""

    def __init__(self, points: int = POINTS, max_series: int = MAX_SERIES) -> None:
        self.points, self.max_series = points, max_series
        self._lock = threading.Lock()
        self._series: dict[str, deque[tuple[float, float, float]]] = {}

    def note(self, key: str, at: Any, figures: Mapping[str, Any]) -> None:
        """Remember `figures` ({cpu_cores: {short}, memory_mib: {short}}) sampled at `at`, unless that
        sample is already the newest; malformed figures are ignored (a page never fails on them)."""
        try:
            point = (float(at), float(figures["cpu_cores"]["short"]), float(figures["memory_mib"]["short"]))
        except (KeyError, TypeError, ValueError):
            return
        with self._lock:
            series = self._series.pop(key, None)  # re-inserted last: the dict's order is recency
            if series is None:
                series = deque(maxlen=self.points)
                while len(self._series) >= self.max_series:
                    del self._series[next(iter(self._series))]
            if not series or point[0] > series[-1][0]:
                series.append(point)
            self._series[key] = series

    def note_hosts(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """The rows of GET /v1/load/hosts (apiload.host_loads)."""
        for r in rows:
            if "at" in r:
                self.note(f"host/{r['host']}", r["at"], r)

    def note_vms(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """The rows of GET /v1/load/vms (apiload.vm_loads)."""
        for r in rows:
            self.note(f"vm/{r['vm']}", r["at"], r)

    def series(self, key: str) -> list[tuple[float, float, float]]:
        with self._lock:
            return list(self._series.get(key, ()))


def sparkline(values: list[float], top: float, width: int = 120, height: int = 24) -> str:
    """SVG polyline points for `values` scaled to [0, top] (values beyond it are drawn at the top),
    the newest at the right edge, one step per point ('' for fewer than two)."""
    if len(values) < 2:
        return ""
    top = top if top > 0 else max(max(values), 1e-9)
    step = width / (len(values) - 1)
    return " ".join(f"{i * step:.1f},{height - min(max(v, 0.0), top) / top * height:.1f}"
                    for i, v in enumerate(values))


def percent(used: Any, total: Any) -> int:
    """used / total as a whole percentage in 0..100 (0 when either is missing or total is 0)."""
    try:
        u, t = float(used), float(total)
    except (TypeError, ValueError):
        return 0
    return 0 if t <= 0 else max(0, min(100, round(100 * u / t)))
