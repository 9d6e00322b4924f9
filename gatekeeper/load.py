"""What this host's VMs use, for the report's `load` (issue 12; contract: hoststate.HostLoad).

Each report takes one sample of libvirt's per-domain counters (HypervisorDriver.stats): CPU in
cores is the growth of a VM's cpu time over the wall time between two samples; memory is what the
guest holds (balloon rss, else balloon current). Both are smoothed here, where every sample is
seen, as exponentially weighted means over a short (SHORT_S) and a long (LONG_S) window that allow
for uneven gaps between samples. The host's figures are the sums over its VMs.

A VM's first sample gives memory only (CPU needs two); a cpu time that went down (the VM was
restarted, or came back by migration) starts its CPU figure again. A VM that is gone is forgotten,
so what is kept stays bounded by the VMs on the host (at most MAX_VMS are reported).
The same sample gives `usage`, each domain's cumulative counters (gatekeeper/usage.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gatekeeper.usage import Nics, UsageMeter
from softudc.model.hoststate import MAX_NAME, MAX_VMS, is_managed

log = logging.getLogger("gatekeeper.load")

SHORT_S, LONG_S = 60.0, 600.0  # the two windows (time constants of the means)
Stats = Callable[[], list[dict[str, Any]]]


@dataclass
class Mean:
    """An exponentially weighted mean over `window` seconds; None until its first value."""

    window: float
    value: float | None = None

    def add(self, x: float, dt: float) -> None:
        if self.value is None:
            self.value = x
            return
        w = 1.0 - math.exp(-max(dt, 0.0) / self.window)
        self.value += w * (x - self.value)


def _pair() -> tuple[Mean, Mean]:
    return Mean(SHORT_S), Mean(LONG_S)


@dataclass
class VmMeter:
    """One VM's counters at its last sample and its smoothed figures."""

    cpu_ns: int
    at: float  # monotonic
    cpu: tuple[Mean, Mean] = field(default_factory=_pair)
    mem: tuple[Mean, Mean] = field(default_factory=_pair)

    def figures(self) -> dict[str, dict[str, float]]:
        return {"cpu_cores": _window(self.cpu, 3), "memory_mib": _window(self.mem, 1)}


def _window(means: tuple[Mean, Mean], digits: int) -> dict[str, float]:
    return {"short": round(means[0].value or 0.0, digits), "long": round(means[1].value or 0.0, digits)}


def _memory_mib(s: dict[str, Any]) -> float:
    kib = s.get("rss_kib") or s.get("memory_kib") or 0
    return max(float(kib), 0.0) / 1024.0


class LoadMeter:
    """Samples `stats` (a HypervisorDriver's) at each `sample()` and returns the report's `load`."""

    def __init__(self, stats: Stats, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, nics: Nics | None = None) -> None:
        self.stats, self.clock, self.wall = stats, clock, wall
        self.vms: dict[str, VmMeter] = {}
        self.samples = 0
        self.usage = UsageMeter(nics)  # the cumulative counters, from the same sample (gatekeeper/usage.py)
        self._usage: dict[str, dict[str, Any]] = {}

    def sample(self) -> dict[str, Any]:
        """One sample taken and the figures as they are now (HostLoad's shape)."""
        now = self.clock()
        seen = set()
        stats = self.stats()
        self._usage = self.usage.sample(stats)
        for s in stats:
            name = s.get("name")
            if not isinstance(name, str) or not is_managed(name) or len(name) > MAX_NAME or s.get("state") != "running":
                continue
            if name not in self.vms and len(self.vms) >= MAX_VMS:
                continue
            seen.add(name)
            self._add(name, s, now)
        for gone in set(self.vms) - seen:
            del self.vms[gone]
        self.samples += 1
        return self.figures()

    def _add(self, name: str, s: dict[str, Any], now: float) -> None:
        cpu_ns = int(s.get("cpu_time_ns") or 0)
        vm = self.vms.get(name)
        if vm is None:
            vm = self.vms[name] = VmMeter(cpu_ns, now)
            for m in vm.mem:
                m.add(_memory_mib(s), 0.0)
            return
        dt = now - vm.at
        if dt <= 0:
            return
        if cpu_ns >= vm.cpu_ns:
            cores = (cpu_ns - vm.cpu_ns) / 1e9 / dt
            for m in vm.cpu:
                m.add(cores, dt)
        else:  # counter reset: the VM started again (or came back); CPU starts over from here
            log.info("%s: cpu time went down (%d -> %d ns); its CPU figure starts again", name, vm.cpu_ns, cpu_ns)
            vm.cpu = _pair()
        for m in vm.mem:
            m.add(_memory_mib(s), dt)
        vm.cpu_ns, vm.at = cpu_ns, now

    def figures(self) -> dict[str, Any]:
        vms = {name: vm.figures() for name, vm in sorted(self.vms.items())}
        host = {k: {w: round(sum(v[k][w] for v in vms.values()), 3) for w in ("short", "long")}
                for k in ("cpu_cores", "memory_mib")}
        return {"at": round(self.wall(), 3), "samples": self.samples, "host": host, "vms": vms, "usage": self._usage}
