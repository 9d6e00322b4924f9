"""The storage service's metrics against a real qemu-storage-daemon: counts, pool, and the I/O an
NBD client (nbdcopy, libnbd) does through an export; a daemon that died is reported down."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from gatekeeper.volumes.metrics import VolumesCollector, process_io
from gatekeeper.volumes.service import VolumeService


def test_metrics_count_volumes_exports_and_pool(service: VolumeService) -> None:
    service.create("m", 1 << 20)
    service.create("n", 1 << 20)
    service.export("m", ["h1"])
    registry = CollectorRegistry()
    registry.register(VolumesCollector("h2", service))
    text = generate_latest(registry).decode()
    assert 'softudc_volumes{host="h2"} 2.0' in text
    assert 'softudc_volume_exports{host="h2"} 1.0' in text
    assert 'softudc_volume_io_bytes_total{direction="write",host="h2",volume="m"}' in text
    assert 'softudc_volume_export_up{host="h2",volume="m"} 1.0' in text
    assert 'softudc_volume_pool_bytes{host="h2",kind="capacity"}' in text


def samples(service: VolumeService) -> dict[tuple[str, ...], float]:
    registry = CollectorRegistry()
    registry.register(VolumesCollector("h2", service))
    return {(s.name, *(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "host")): s.value
            for f in registry.collect() for s in f.samples}


def test_io_through_an_export_is_counted_and_a_dead_daemon_is_down(service: VolumeService, certs: Path,
                                                                   tmp_path: Path) -> None:
    service.create("m", 4 << 20)
    e = service.export("m", ["h1"])
    data = tmp_path / "data"
    data.write_bytes(b"\x5a" * (1 << 20))
    uri = f"{e['uri']}?tls-certificates={certs / 'h1'}"
    subprocess.run(["nbdcopy", str(data), uri], check=True, timeout=30, capture_output=True)
    got = samples(service)
    assert got[("softudc_volume_io_bytes_total", "direction=write", "volume=m")] >= 1 << 20
    assert got[("softudc_volume_io_syscalls_total", "direction=write", "volume=m")] >= 1
    assert got[("softudc_volume_export_up", "volume=m")] == 1.0
    service.exports.daemon("m").stop()
    got = samples(service)
    assert got[("softudc_volume_export_up", "volume=m")] == 0.0
    assert ("softudc_volume_io_bytes_total", "direction=write", "volume=m") not in got


def test_process_io_reads_proc_and_tolerates_a_gone_process(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "io").write_text("rchar: 10\nwchar: 20\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\n"
                                       "write_bytes: 8192\ncancelled_write_bytes: 0\n")
    assert process_io(7, tmp_path) == {"rchar": 10, "wchar": 20, "syscr": 3, "syscw": 4, "read_bytes": 4096,
                                       "write_bytes": 8192, "cancelled_write_bytes": 0}
    assert process_io(8, tmp_path) == {}
