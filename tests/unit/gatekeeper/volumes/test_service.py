from __future__ import annotations

from gatekeeper.volumes.service import VolumeService
from softudc.model.hoststate import HostReport, parse, problems_of

MiB = 1 << 20


def test_operations_and_describe(service: VolumeService) -> None:
    ops = service.operations()
    assert set(ops) >= {"volume.create", "volume.delete", "volume.list", "volume.export", "volume.allow",
                        "volume.unexport", "pool.status"}
    ops["volume.create"](name="d", size_bytes=2 * MiB)
    assert ops["volume.describe"](name="d")["export"] is None
    assert ops["volume.list"]() == [{"name": "d", "size_bytes": 2 * MiB, "allocated_bytes":
                                     service.pool.info("d").allocated_bytes, "backing": None, "snapshots": [],
                                     "exported": False}]
    status = ops["pool.status"]()
    assert status["free_bytes"] <= status["capacity_bytes"]
    service.start()  # nothing to restore


def test_pool_status_is_what_the_host_report_contract_takes(service: VolumeService) -> None:
    report = parse(HostReport, {"pool": service.pool_status()})
    assert report.pool is not None and report.pool.capacity_bytes == service.pool.capacity_bytes()
    assert problems_of(HostReport, {"pool": {"capacity_bytes": -1}}) != []
    assert problems_of(HostReport, {"pool": {"used": 1}}) != []
