"""The gatekeeper's Prometheus metrics, all defined here, in the daemon's own registry.

The forwarding threads keep plain integer counters; this collector reads them at scrape time,
so the hot path never takes a metrics lock.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gatekeeper.vnet.service import VnetService


class GatekeeperCollector(Collector):
    def __init__(self, service: VnetService) -> None:
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        host = self.service.config.host
        frames = CounterMetricFamily("softudc_vnet_frames", "Frames forwarded per VNET and direction",
                                     labels=["host", "vnet", "direction"])
        octets = CounterMetricFamily("softudc_vnet_bytes", "Inner frame bytes per VNET and direction",
                                     labels=["host", "vnet", "direction"])
        flooded = CounterMetricFamily("softudc_vnet_flooded_frames",
                                      "Broadcast/multicast frames sent to every member host",
                                      labels=["host", "vnet"])
        for port in list(self.service.forwarder.vnets.values()):
            v = str(port.vnet)
            frames.add_metric([host, v, "tx"], port.stats[0])
            frames.add_metric([host, v, "rx"], port.stats[2])
            octets.add_metric([host, v, "tx"], port.stats[1])
            octets.add_metric([host, v, "rx"], port.stats[3])
            flooded.add_metric([host, v], port.stats[4])
        yield frames
        yield octets
        yield flooded
        drops = CounterMetricFamily("softudc_dataplane_drops", "Frames and datagrams dropped, by reason",
                                    labels=["host", "path", "reason"])
        for path, counter in self.service.forwarder.drops.items():
            for reason, n in list(counter.items()):
                drops.add_metric([host, path, reason], n)
        yield drops
        fixed = CounterMetricFamily("softudc_dataplane_rx_fixed",
                                    "Frames the userspace receive path finished for their sender (an eBPF "
                                    "host's partial checksums and whole TCP super-frames), by kind",
                                    labels=["host", "kind"])
        for kind, n in list(self.service.forwarder.rx_fixed.items()):
            fixed.add_metric([host, kind], n)
        yield fixed
        varp = CounterMetricFamily("softudc_varp_messages", "VARP events by kind", labels=["host", "kind"])
        for kind, n in list(self.service.varp_counts.items()):
            varp.add_metric([host, kind], n)
        yield varp
        entries = GaugeMetricFamily("softudc_varp_cache_entries", "VARP cache entries by state",
                                    labels=["host", "state"])
        counts: dict[str, int] = {}
        for e in self.service.varp_entries():
            counts[str(e["state"])] = counts.get(str(e["state"]), 0) + 1
        for state in ("incomplete", "reachable", "stale", "failed"):
            entries.add_metric([host, state], counts.get(state, 0))
        yield entries
        vnets = GaugeMetricFamily("softudc_vnets", "VNETs present on this host", labels=["host"])
        vnets.add_metric([host], len(self.service.forwarder.vnets))
        yield vnets
        yield from self._workers(host)
        yield from self._esp(host)
        yield from self._datapath(host)

    def _datapath(self, host: str) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Which path each VNET runs on (eBPF or the userspace forwarder) and the eBPF programs'
        verdicts and drops by reason (docs/ebpf.md)."""
        fastpath = getattr(self.service, "fastpath", None)  # None: a service built without it (tests)
        if fastpath is None:
            return
        path = GaugeMetricFamily("softudc_vnet_datapath", "1 for the data path each VNET runs on",
                                 labels=["host", "vnet", "path"])
        for choice in sorted(fastpath.choices.values(), key=lambda c: c.vnet):
            path.add_metric([host, str(choice.vnet), choice.path], 1)
        yield path
        gro = getattr(fastpath, "gro", None)  # chosen at the first eBPF VNET
        if gro is not None:
            chosen = GaugeMetricFamily("softudc_vnet_gro_after_decap", "GRO after decapsulation chosen for the "
                                       "underlay (1 on, 0 off; gatekeeper/vnet/bpf/gro.py)", labels=["host", "device"])
            chosen.add_metric([host, gro.device], int(gro.on))
            yield chosen
        verdicts = CounterMetricFamily("softudc_vnet_ebpf_packets", "eBPF data path packets by verdict or drop "
                                       "reason", labels=["host", "verdict"])
        for verdict, n in sorted(fastpath.status()["counters"].items()):
            verdicts.add_metric([host, verdict], n)
        yield verdicts

    def _esp(self, host: str) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """The ESP SA table: bounded (evictions count what spoofed or many senders pushed out),
        ESN resyncs (late joiners), senders stopped (sequence space or its store)."""
        sas = self.service.forwarder.sas
        events = CounterMetricFamily("softudc_esp_sa_events", "ESP SA events: sa_evicted, esn_resync, "
                                     "seq_exhausted, seq_store_failed", labels=["host", "event"])
        for event, n in sorted(sas.counts.items()):
            events.add_metric([host, event.removeprefix("esp_")], n)
        yield events
        inbound = GaugeMetricFamily("softudc_esp_inbound_sas", "Inbound ESP SAs held (bounded LRU)", labels=["host"])
        inbound.add_metric([host], sas.inbound_count())
        yield inbound
        engine = GaugeMetricFamily("softudc_vnet_esp_engine", "1 for the engine that seals and opens ESP: "
                                   "native (C, OpenSSL EVP: gatekeeper/vnet/native) or python (fallback)",
                                   labels=["host", "engine"])
        engine.add_metric([host, sas.engine], 1)
        yield engine

    def _workers(self, host: str) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """The forwarding threads under their supervisor: a restart means one died (see the log)."""
        supervisor = self.service.forwarder.supervisor
        restarts = CounterMetricFamily("softudc_gatekeeper_worker_restarts",
                                       "Data-plane worker threads restarted after they died", labels=["host", "worker"])
        up = GaugeMetricFamily("softudc_gatekeeper_worker_up", "1 while the data-plane worker thread runs",
                               labels=["host", "worker"])
        workers = supervisor.health()["workers"]
        for worker, n in sorted(supervisor.restarts().items()):
            restarts.add_metric([host, worker], n)
            up.add_metric([host, worker], 1 if workers.get(worker) == "running" else 0)
        yield restarts
        yield up


def make_registry(service: VnetService) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(GatekeeperCollector(service))
    return registry
