"""The storage service's Prometheus metrics (registered beside the gatekeeper's own)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gatekeeper.volumes.qmp import QmpConnectionError, QmpError
from gatekeeper.volumes.service import VolumeService


class VolumesCollector(Collector):
    def __init__(self, host: str, service: VolumeService) -> None:
        self.host, self.service = host, service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        h = self.host
        volumes = self.service.volumes()
        count = GaugeMetricFamily("softudc_volumes", "Volumes in this host's pool", labels=["host"])
        count.add_metric([h], len(volumes))
        yield count
        exports = GaugeMetricFamily("softudc_volume_exports", "Volumes exported over NBD+TLS", labels=["host"])
        exports.add_metric([h], sum(1 for v in volumes if v["exported"]))
        yield exports
        pool = GaugeMetricFamily("softudc_volume_pool_bytes", "Pool capacity and free bytes", labels=["host", "kind"])
        for kind, n in self.service.pool_status().items():
            pool.add_metric([h, kind.removesuffix("_bytes")], n)
        yield pool
        allocated = GaugeMetricFamily("softudc_volume_allocated_bytes", "Bytes a volume takes on disk",
                                      labels=["host", "volume"])
        for v in volumes:
            allocated.add_metric([h, v["name"]], v["allocated_bytes"])
        yield allocated
        io = CounterMetricFamily("softudc_volume_export_bytes", "Bytes through a volume's NBD export",
                                 labels=["host", "volume", "direction"])
        for name in self.service.exports.names():
            try:
                stats = self.service.exports.stats(name)
            except (QmpError, QmpConnectionError):
                continue  # its daemon is down: the restore at start-up brings it back
            io.add_metric([h, name, "read"], stats.get("rd_bytes", 0))
            io.add_metric([h, name, "write"], stats.get("wr_bytes", 0))
        yield io
