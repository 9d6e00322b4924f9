"""Usage accounting per farm and per VM (issue 15): CPU-seconds, memory GiB-hours and network
bytes per VNET, from the cumulative counters the gatekeepers report (hoststate.VmUsage, in the
report's `load.usage`; gatekeeper/usage.py).

The manager integrates deltas per (host, VM): each host keeps what it last reported of each
domain (`seen`) and what its domains have used (`totals`, and per hour in `hours`, for `--since`).
A domain seen for the first time, one whose identity (uuid/libvirt id) changed, or one whose CPU
counter went down is a new domain: it counts from 0. A domain that left a host's report is
forgotten there (its totals stay). So a migration counts the source's domain up to its last report
and the destination's from 0: nothing twice; lost is only what a domain used after the last report
before it stopped (a report interval, 2 s by default). Memory is integrated as what the domain held
at a report times the time to the next report (GiB-hours). Volume GiB-hours the same way: the
summed sizes of the instance's volumes as its farm defines them (the manager's volumes: what the
storage host holds for it, thin or not) at a report, times the time to the next report; a VM is
charged for its volumes while it reports (a stopped VM's volumes are not charged in this version).

Each host's book is one store object of kind `usage` named by the host, written by this manager's
thread at most every FLUSH_EVERY_S, with the revision it read (`expect`): a host that moved to
another manager meanwhile makes the write fail (Conflict), the book is dropped and read again at the
host's next report. Totals and `seen` are written together, so a restart or a fail-over continues
from the written counters: what was used meanwhile is counted at the next report, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from softudc.manager.farms import FARMS
from softudc.manager.flushing import FlushedBook
from softudc.manager.load import LoadView
from softudc.manager.store import Conflict, Store
from softudc.model.hoststate import HostLoad, problems_of, split_vm_name, vm_name

log = logging.getLogger("softudc.manager.usage")

KIND = "usage"  # one object per host
FLUSH_EVERY_S = 20.0
HOUR_S = 3600
KEEP_HOURS = 24 * 62  # hourly figures kept this long (totals since the first report are kept forever)
EXPORT_S = 3600.0  # a VM is exported to Prometheus while it reported within this long

VOLUMES_S = 10.0  # the VMs' volume sizes are read from the farms at most this often
GIB = float(1 << 30)

Totals = dict[str, Any]  # {"cpu_s", "mem_gib_h", "vol_gib_h", "net": {vnet: [rx, tx]}, "last"}


def volume_bytes(store: Store) -> dict[str, int]:
    """VM (domain name) -> the summed sizes of its instance's volumes, from the stored farms."""
    out: dict[str, int] = {}
    for obj in store.objects("farm"):
        farm = FARMS.for_hosts(obj)
        if farm is None:
            continue
        sizes = {vm.name: sum(v.size_bytes for v in vm.volumes) for vm in farm.vms}
        for inst in obj.status.get("instances", []):
            if sizes.get(inst.get("vm", "")):
                out[vm_name(obj.name, inst["name"])] = sizes[inst["vm"]]
    return out


def _net_of(sample: dict[str, Any]) -> dict[str, list[int]]:
    """A sample's NICs summed per VNET (keys as strings: they go to JSON)."""
    out: dict[str, list[int]] = {}
    for n in sample.get("net", []):
        row = out.setdefault(str(n["vnet"]), [0, 0])
        row[0] += int(n["rx_bytes"])
        row[1] += int(n["tx_bytes"])
    return out


def is_new(prev: dict[str, Any] | None, sample: dict[str, Any]) -> bool:
    """Whether `sample` is of another domain than `prev` (then it counts from 0)."""
    if prev is None:
        return True
    ident, before = sample.get("id", ""), prev.get("id", "")
    return bool(ident and before and ident != before) or int(sample["cpu_ns"]) < int(prev["cpu_ns"])


def advance(prev: dict[str, Any] | None, sample: dict[str, Any], at: float,
            vol_bytes: int = 0) -> tuple[dict[str, Any], Totals]:
    """What the domain is now (`seen`; `vol_bytes`: its volumes' size) and what it used since
    `prev` (a delta, as Totals)."""
    net = _net_of(sample)
    now = {"id": sample.get("id", ""), "cpu_ns": int(sample["cpu_ns"]), "mem_mib": float(sample.get("memory_mib", 0)),
           "at": at, "net": net, "vol_bytes": int(vol_bytes)}
    if is_new(prev, sample):
        return now, {"cpu_s": now["cpu_ns"] / 1e9, "mem_gib_h": 0.0, "vol_gib_h": 0.0, "net": net}
    assert prev is not None
    delta_net = {}
    for vnet, (rx, tx) in net.items():
        b_rx, b_tx = prev.get("net", {}).get(vnet, (0, 0))
        delta_net[vnet] = [rx - b_rx if rx >= b_rx else rx, tx - b_tx if tx >= b_tx else tx]  # went down: a new NIC
    hours = max(at - float(prev.get("at", at)), 0.0) / 3600.0
    mem = float(prev.get("mem_mib", 0.0)) / 1024.0 * hours
    vol = float(prev.get("vol_bytes", 0)) / GIB * hours
    return now, {"cpu_s": (now["cpu_ns"] - int(prev["cpu_ns"])) / 1e9, "mem_gib_h": mem, "vol_gib_h": vol,
                 "net": delta_net}


def add(into: Totals, delta: Totals) -> None:
    into["cpu_s"] = into.get("cpu_s", 0.0) + delta.get("cpu_s", 0.0)
    into["mem_gib_h"] = into.get("mem_gib_h", 0.0) + delta.get("mem_gib_h", 0.0)
    into["vol_gib_h"] = into.get("vol_gib_h", 0.0) + delta.get("vol_gib_h", 0.0)
    net = into.setdefault("net", {})
    for vnet, (rx, tx) in delta.get("net", {}).items():
        row = net.setdefault(vnet, [0, 0])
        row[0] += rx
        row[1] += tx


class HostBook:
    """One host's object: {"seen": {vm: ...}, "totals": {vm: Totals}, "hours": {vm: {hour: Totals}}, "at"}."""

    def __init__(self, spec: dict[str, Any] | None, revision: int) -> None:
        spec = spec or {}
        self.seen: dict[str, Any] = dict(spec.get("seen", {}))
        self.totals: dict[str, Totals] = dict(spec.get("totals", {}))
        self.hours: dict[str, dict[str, Totals]] = dict(spec.get("hours", {}))
        self.at = float(spec.get("at", 0.0))
        self.revision, self.dirty = revision, False

    def note(self, usage: dict[str, Any], at: float, volumes: dict[str, int] | None = None) -> bool:
        """A report's usage at wall time `at` (`volumes`: VM -> its volumes' bytes); False when it
        is not newer than the last one."""
        if at <= self.at:
            return False
        hour = str(int(at // HOUR_S * HOUR_S))
        for vm, sample in usage.items():
            self.seen[vm], delta = advance(self.seen.get(vm), sample, at, (volumes or {}).get(vm, 0))
            add(self.totals.setdefault(vm, {}), delta)
            self.totals[vm]["last"] = at
            add(self.hours.setdefault(vm, {}).setdefault(hour, {}), delta)
        for gone in set(self.seen) - set(usage):
            del self.seen[gone]
        self._prune(at)
        self.at, self.dirty = at, True
        return True

    def _prune(self, at: float) -> None:
        oldest = at - KEEP_HOURS * HOUR_S
        for vm, hours in list(self.hours.items()):
            for h in [h for h in hours if float(h) < oldest]:
                del hours[h]
            if not hours:
                del self.hours[vm]

    def spec(self) -> dict[str, Any]:
        return {"at": self.at, "seen": self.seen, "totals": self.totals, "hours": self.hours}


class UsageBook(FlushedBook):
    """The usage books of the hosts that report to this manager; `note` from MeteredLoadView."""

    what = "the usage books"

    def __init__(self, store: Store, manager_id: str, every_s: float = FLUSH_EVERY_S) -> None:
        super().__init__(manager_id, every_s)
        self.store = store
        self._lock = threading.Lock()
        self._hosts: dict[str, HostBook] = {}
        self.flushes = self.conflicts = 0
        self._volumes: tuple[float, dict[str, int]] = (float("-inf"), {})

    def _volume_bytes(self) -> dict[str, int]:
        """volume_bytes(store), read again after VOLUMES_S (called under the lock)."""
        at, sizes = self._volumes
        if time.monotonic() - at >= VOLUMES_S:
            sizes = volume_bytes(self.store)
            self._volumes = (time.monotonic(), sizes)
        return sizes

    def note(self, host: str, load: dict[str, Any]) -> None:
        usage = load.get("usage")
        if not isinstance(usage, dict):
            return
        with self._lock:
            book = self._hosts.get(host)
            if book is None:
                obj = self.store.get(KIND, host)
                book = self._hosts[host] = HostBook(obj.spec if obj else None, obj.revision if obj else 0)
            if book.note(usage, float(load.get("at", time.time())), self._volume_bytes()):
                self._wake("usage")

    def latest(self) -> dict[str, dict[str, Any]]:
        """host -> spec as this manager holds it now (copies of the totals; flushed or not)."""
        with self._lock:
            return {h: {"totals": {vm: _copy(t) for vm, t in b.totals.items()},
                        "hours": {vm: {h2: _copy(t) for h2, t in hs.items()} for vm, hs in b.hours.items()}}
                    for h, b in self._hosts.items()}

    def flush(self) -> bool:
        with self._lock:
            dirty = [(h, b, b.spec(), b.revision) for h, b in self._hosts.items() if b.dirty]
            for _, b, _, _ in dirty:
                b.dirty = False
            specs = [(h, b, _deep(s), r) for h, b, s, r in dirty]
        for host, book, spec, revision in specs:
            try:
                rev = self.store.put(KIND, host, spec, expect=revision)
            except Conflict:  # the host reports to another manager now: its book is that one's
                log.info("usage of %s was written by another manager; read again at its next report", host)
                self.conflicts += 1
                with self._lock:
                    if self._hosts.get(host) is book:
                        del self._hosts[host]
                continue
            except BaseException:
                with self._lock:
                    book.dirty = True
                raise
            with self._lock:
                book.revision = rev
            self.flushes += 1
        return bool(specs)


def _copy(t: Totals) -> Totals:
    return {**t, "net": {v: list(p) for v, p in t.get("net", {}).items()}}


def _deep(spec: dict[str, Any]) -> dict[str, Any]:
    return {"at": spec["at"], "seen": {vm: {**s, "net": {v: list(p) for v, p in s["net"].items()}}
                                       for vm, s in spec["seen"].items()},
            "totals": {vm: _copy(t) for vm, t in spec["totals"].items()},
            "hours": {vm: {h: _copy(t) for h, t in hs.items()} for vm, hs in spec["hours"].items()}}


class MeteredLoadView(LoadView):
    """The load view that also hands each report's `usage` to the usage book; the usage is not kept
    in the load objects (it is kept in the usage books)."""

    def __init__(self, store: Store, manager_id: str, usage: UsageBook) -> None:
        super().__init__(store, manager_id)
        self.usage = usage

    def note(self, host: str, load: Any, checked: bool = False) -> bool:
        if not checked and problems_of(HostLoad, load):
            self.refused += 1
            return False
        if isinstance(load, dict) and "usage" in load:
            self.usage.note(host, load)
            load = {k: v for k, v in load.items() if k != "usage"}
        return super().note(host, load, checked=True)

    def close(self) -> None:
        super().close()
        self.usage.close()


def usage_of(store: Store, extra: dict[str, dict[str, Any]] | None = None, since: float | None = None) \
        -> dict[str, Totals]:
    """vm -> Totals summed over every host's book (this manager's unwritten ones from `extra`);
    with `since`: only the hours from the one `since` falls in."""
    books = {o.name: o.spec for o in store.objects(KIND)}
    books.update(extra or {})
    first = None if since is None else since // HOUR_S * HOUR_S
    out: dict[str, Totals] = {}
    for spec in books.values():
        if first is None:
            parts = [(vm, t) for vm, t in spec.get("totals", {}).items()]
        else:
            parts = [(vm, t) for vm, hs in spec.get("hours", {}).items() for h, t in hs.items() if float(h) >= first]
        for vm, t in parts:
            row = out.setdefault(vm, {"cpu_s": 0.0, "mem_gib_h": 0.0, "vol_gib_h": 0.0, "net": {}, "last": 0.0})
            add(row, t)
            row["last"] = max(row["last"], float(t.get("last", 0.0)))
    return out


def report(usage: dict[str, Totals], readable: Callable[[str], bool]) -> dict[str, Any]:
    """GET /v1/usage's answer: {farms: [{farm, cpu_seconds, memory_gib_hours, volume_gib_hours,
    network: [{vnet, rx_bytes, tx_bytes}], vms: [{vm, ...the same}]}]}, the farms `readable` allows."""
    farms: dict[str, dict[str, Any]] = {}
    for vm, t in sorted(usage.items()):
        owner = split_vm_name(vm)
        if owner is None or not readable(owner[0]):
            continue
        farm = farms.setdefault(owner[0], {"farm": owner[0], "totals": {}, "vms": []})
        add(farm["totals"], t)
        farm["vms"].append({"vm": vm, **_figures(t)})
    return {"farms": [{"farm": f["farm"], **_figures(f["totals"]), "vms": f["vms"]} for f in farms.values()],
            "volume_gib_hours": "the sizes of each VM's volumes while it runs (docs/usage.md)"}


def _figures(t: Totals) -> dict[str, Any]:
    return {"cpu_seconds": round(t.get("cpu_s", 0.0), 3), "memory_gib_hours": round(t.get("mem_gib_h", 0.0), 6),
            "volume_gib_hours": round(t.get("vol_gib_h", 0.0), 6),
            "network": [{"vnet": int(v), "rx_bytes": rx, "tx_bytes": tx}
                        for v, (rx, tx) in sorted(t.get("net", {}).items(), key=lambda kv: int(kv[0]))]}


class UsageCollector(Collector):
    """Prometheus: softudc_usage_cpu_seconds_total{farm,vm}, softudc_usage_memory_byte_seconds_total
    {farm,vm}, softudc_usage_volume_byte_seconds_total{farm,vm},
    softudc_usage_network_bytes_total{farm,vm,vnet,direction}: the VMs that reported
    within EXPORT_S (bounded by the VMs that run; a stopped VM's series ends an hour later)."""

    def __init__(self, store: Store, book: Callable[[], UsageBook]) -> None:
        self.store, self.book = store, book

    def collect(self) -> Iterator[CounterMetricFamily]:
        cpu = CounterMetricFamily("softudc_usage_cpu_seconds", "CPU time a VM used", labels=["farm", "vm"])
        mem = CounterMetricFamily("softudc_usage_memory_byte_seconds", "Memory a VM held, integrated over time",
                                  labels=["farm", "vm"])
        vol = CounterMetricFamily("softudc_usage_volume_byte_seconds", "The sizes of a VM's volumes, "
                                  "integrated over the time it ran", labels=["farm", "vm"])
        net = CounterMetricFamily("softudc_usage_network_bytes", "Bytes a VM's NICs on a VNET received (rx) or sent",
                                  labels=["farm", "vm", "vnet", "direction"])
        recent = time.time() - EXPORT_S
        for vm, t in sorted(usage_of(self.store, extra=self.book().latest()).items()):
            owner = split_vm_name(vm)
            if owner is None or t["last"] < recent:
                continue
            cpu.add_metric([owner[0], vm], t["cpu_s"])
            mem.add_metric([owner[0], vm], t["mem_gib_h"] * GIB * 3600.0)
            vol.add_metric([owner[0], vm], t.get("vol_gib_h", 0.0) * GIB * 3600.0)
            for vnet, (rx, tx) in sorted(t["net"].items()):
                net.add_metric([owner[0], vm, vnet, "rx"], float(rx))
                net.add_metric([owner[0], vm, vnet, "tx"], float(tx))
        yield from (cpu, mem, vol, net)
