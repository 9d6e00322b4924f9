from __future__ import annotations

from gatekeeper.volumes.service import VolumeService

MiB = 1 << 20


def test_operations_and_describe(service: VolumeService) -> None:
    ops = service.operations()
    assert set(ops) >= {"volume.create", "volume.delete", "volume.list", "volume.export", "volume.allow",
                        "volume.unexport", "pool.status"}
    ops["volume.create"](name="d", size_bytes=2 * MiB)
    assert ops["volume.describe"](name="d")["export"] is None
    assert ops["volume.list"]() == [{"name": "d", "size_bytes": 2 * MiB, "allocated_bytes":
                                     service.pool.info("d").allocated_bytes, "backing": None, "exported": False}]
    status = ops["pool.status"]()
    assert status["free_bytes"] <= status["capacity_bytes"]
    service.start()  # nothing to restore
