"""The VM host's mirrored disks: replicas out of the desired VMs, the domain's disk, the report and
the metric; a mirror no VM wants any more is stopped after the grace (real qsd)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gatekeeper.volumes import mirror_hold
from gatekeeper.volumes.mirror import Mirrors, Replica
from gatekeeper.volumes.mirror_hold import MirrorKeeper, ReplicaCollector, mirror_disk, wanted_mirrors
from softudc.model.hoststate import DesiredVm, HostReport

VID = "shop--db-0--data"


def vm(replicas: list[dict[str, object]]) -> DesiredVm:
    return DesiredVm.model_validate({"name": "shop--db-0", "vcpus": 1, "memory_mib": 64, "disks": [
        {"volume": VID, "target": "vdb", "replicas": replicas, "iops": 500, "mbps": 20},
        {"volume": "shop--db-0--root", "target": "vdc", "local": True, "host": "h1"}]})


def test_replicas_and_the_domain_disk_come_from_the_desired_vms(run_dir: Path) -> None:
    reps = [{"volume": f"{VID}.r1", "host": "h2", "address": "10.0.0.2", "port": 10809},
            {"volume": f"{VID}.r2", "host": "h3", "address": "10.0.0.3", "port": 10810}]
    want = wanted_mirrors([vm(reps)])
    assert want == {VID: [Replica(f"{VID}.r1", "h2", "10.0.0.2", 10809), Replica(f"{VID}.r2", "h3", "10.0.0.3", 10810)]}
    mirrors = Mirrors(run_dir, run_dir / "tls")
    disk = mirror_disk(vm(reps).disks[0], mirrors)
    assert disk.unix == (str(mirrors.socket_path(VID)), VID) and disk.target == "vdb"
    assert (disk.iops, disk.bytes_sec) == (500, 20_000_000)  # QoS as for a remote volume
    with pytest.raises(ValueError, match="runs no storage service"):
        mirror_disk(vm(reps).disks[0], None)


def test_health_goes_to_the_report_and_the_metric(run_dir: Path) -> None:
    keeper = MirrorKeeper(Mirrors(run_dir, run_dir / "tls"))
    keeper.health = {VID: {"replicas": {f"{VID}.r1": "healthy", f"{VID}.r3": "rebuilding"}, "progress": 0.5}}
    HostReport.model_validate({"mirrors": keeper.report()})  # contract 3's report takes it
    registry = CollectorRegistry()
    registry.register(ReplicaCollector("h1", keeper))
    value = registry.get_sample_value
    assert value("softudc_volume_replicas", {"host": "h1", "volume": VID, "state": "healthy"}) == 1
    assert value("softudc_volume_replicas", {"host": "h1", "volume": VID, "state": "rebuilding"}) == 1
    assert value("softudc_volume_replicas", {"host": "h1", "volume": VID, "state": "failed"}) == 0


def test_an_unwanted_mirror_is_stopped_after_the_grace(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirrors = Mirrors(run_dir, run_dir / "tls")
    mirrors.daemon(VID).start()  # a mirror's daemon left from a VM that went away
    (mirrors.socket_path(VID).parent / "mirror.json").write_text(
        f'{{"volume": "{VID}", "replicas": {{}}, "children": [], "job": null}}')
    keeper = MirrorKeeper(mirrors)
    assert keeper.converge([]) == ([], []) and mirrors.names() == [VID]  # within the grace
    monkeypatch.setattr(mirror_hold, "GRACE_S", 0.0)
    pid = mirrors.daemon(VID).pid()
    assert keeper.converge([]) == ([f"mirror.stop {VID}"], []) and mirrors.names() == []
    assert pid is not None and mirrors.daemon(VID).pid() is None
