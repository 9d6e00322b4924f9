from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from gatekeeper.volumes.metrics import VolumesCollector
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
    assert 'softudc_volume_export_bytes_total{direction="write",host="h2",volume="m"} 0.0' in text
    assert 'softudc_volume_pool_bytes{host="h2",kind="capacity"}' in text
