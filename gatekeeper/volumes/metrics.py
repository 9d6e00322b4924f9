"""The storage service's Prometheus metrics (registered beside the gatekeeper's own): the pool, its
volumes and exports, and per exported volume its I/O and whether its daemon answers
(`softudc_volume_export_up`: 0 is a volume its VMs cannot reach).

I/O: qemu-storage-daemon 7.2 counts I/O per BlockBackend only, and `query-blockstats` skips the
export's anonymous one (with `query-nodes` every counter but `wr_highest_offset` is 0: measured).
Each exported volume has a daemon of its own, so its I/O is that process's (Linux /proc/PID/io):
`read_bytes`/`write_bytes`, what it fetched from and sent to the storage layer (the volume's data
and qcow2 metadata; a read served from the page cache is not counted), and the read/write system
calls it made (`syscr`/`syscw`: the NBD socket's included).

Labels are bounded by the pool: a volume label per volume the host holds, nothing per request.
Moves and replicas do not exist in this version (docs/volumes.md): no series for them yet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gatekeeper.volumes.qmp import QmpConnectionError, QmpError
from gatekeeper.volumes.service import VolumeService


def process_io(pid: int, proc: Path = Path("/proc")) -> dict[str, int]:
    """/proc/PID/io as numbers ({} when the process is gone or its figures are not ours to read)."""
    try:
        text = (proc / str(pid) / "io").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            out[key.strip()] = int(value)
    return out


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
        yield from self._exports()

    def _exports(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        h = self.host
        io = CounterMetricFamily("softudc_volume_io_bytes", "Bytes an exported volume's qemu-storage-daemon "
                                 "read from and wrote to storage (/proc/PID/io; page-cache reads not counted)",
                                 labels=["host", "volume", "direction"])
        calls = CounterMetricFamily("softudc_volume_io_syscalls", "Read and write system calls of an exported "
                                    "volume's qemu-storage-daemon (its NBD socket's included)",
                                    labels=["host", "volume", "direction"])
        up = GaugeMetricFamily("softudc_volume_export_up", "1 while an exported volume's qemu-storage-daemon "
                               "answers, 0 when it does not (its VMs lose their disk)", labels=["host", "volume"])
        for name in self.service.exports.names():
            daemon = self.service.exports.daemon(name)
            try:
                with daemon.qmp() as q:
                    q.execute("query-block-exports")
            except (QmpError, QmpConnectionError, OSError):
                up.add_metric([h, name], 0.0)  # its daemon is down: the restore at start-up brings it back
                continue
            up.add_metric([h, name], 1.0)
            pid = daemon.pid()
            figures = process_io(pid) if pid else {}
            if not figures:
                continue
            for direction, key in (("read", "read"), ("write", "write")):
                io.add_metric([h, name, direction], figures.get(f"{key}_bytes", 0))
                calls.add_metric([h, name, direction], figures.get(f"sysc{key[0]}", 0))
        yield from (io, calls, up)
