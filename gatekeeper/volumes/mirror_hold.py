"""This host's side of mirrored volumes: the quorum daemon of each mirrored disk its VMs have (or
are about to receive by migration), made before the VMs' actions, stopped once no VM here wants it;
each replica's health for the host report (`mirrors`) and the metric `softudc_volume_replicas`.

The manager hands a mirrored disk's replicas (`DesiredDisk.replicas`: pool volume, storage host,
export address and port); gatekeeper/volumes/mirror.py starts the daemon with the first two and,
when the manager swaps a lost replica for a new one, rebuilds the new one and takes it into the
quorum. A mirror no VM here wants is stopped after GRACE_S (a VM migrating away keeps its disk
until libvirt is done with it; the manager's plan may miss a round).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gatekeeper.hypervisor.domain import DiskSpec
from gatekeeper.volumes.mirror import FAILED, HEALTHY, REBUILDING, Mirrors, Replica
from softudc.model.hoststate import DesiredDisk, DesiredVm

log = logging.getLogger("gatekeeper.volumes")
GRACE_S = 15.0
MB = 10**6  # a volume's `mbps` limit is in MB/s (as gatekeeper/volumes/converge.py)
STATES = (HEALTHY, FAILED, REBUILDING)


def wanted_mirrors(vms: Sequence[DesiredVm]) -> dict[str, list[Replica]]:
    """Mirrored volume -> its replicas, for every disk of the VMs wanted here that has replicas."""
    out: dict[str, list[Replica]] = {}
    for vm in vms:
        for d in vm.disks:
            if d.replicas:
                out[d.volume] = [Replica(r.volume, r.host, r.address, r.port) for r in d.replicas]
    return out


def mirror_disk(d: DesiredDisk, mirrors: Mirrors | None) -> DiskSpec:
    """The domain's disk of a mirrored volume: NBD over the quorum daemon's unix socket."""
    if mirrors is None:
        raise ValueError(f"disk {d.target}: volume {d.volume} is mirrored, and this host runs no storage service "
                         "([volumes] in the gatekeeper file: its client certificate reaches the replicas)")
    return DiskSpec(d.target, unix=(str(mirrors.socket_path(d.volume)), d.volume), iops=d.iops,
                    bytes_sec=d.mbps * MB if d.mbps else None)


class MirrorKeeper:
    def __init__(self, mirrors: Mirrors) -> None:
        self.mirrors = mirrors
        self.health: dict[str, dict[str, Any]] = {}  # the last round's, for the report and the metric
        self._unwanted_since: dict[str, float] = {}

    def converge(self, vms: Sequence[DesiredVm]) -> tuple[list[str], list[str]]:
        """One round: (what was done, errors); each mirror's failure is said and the rest go on."""
        wanted = wanted_mirrors(vms)
        done: list[str] = []
        errors: list[str] = []
        for name, replicas in sorted(wanted.items()):
            try:
                done += self.mirrors.ensure(name, replicas)
            except Exception as e:
                errors.append(f"mirrored volume {name}: {e}")
                log.warning("mirror %s: %s", name, e)
        now = time.monotonic()
        have = self.mirrors.names()
        self._unwanted_since = {n: self._unwanted_since.get(n, now) for n in have if n not in wanted}
        for name, since in list(self._unwanted_since.items()):
            if now - since >= GRACE_S:
                self.mirrors.stop(name)
                self._unwanted_since.pop(name)
                done.append(f"mirror.stop {name}")
        self.health = {n: self.mirrors.health(n) for n in self.mirrors.names()}
        return done, errors

    def report(self) -> dict[str, dict[str, Any]]:
        """The host report's `mirrors`: {volume: {replicas: {name: state}, progress}}."""
        return dict(self.health)


class ReplicaCollector(Collector):
    """softudc_volume_replicas{host,volume,state}: each mirrored volume's replicas here by health."""

    def __init__(self, host: str, keeper: MirrorKeeper) -> None:
        self.host, self.keeper = host, keeper

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("softudc_volume_replicas", "Replicas of a mirrored volume a VM here opens, by "
                              "health (healthy, failed: lost, rebuilding: being copied in)",
                              labels=["host", "volume", "state"])
        for volume, h in sorted(self.keeper.health.items()):
            for state, n in _counts(h.get("replicas", {}).values()):
                g.add_metric([self.host, volume, state], n)
        yield g


def _counts(states: Iterable[str]) -> Iterator[tuple[str, int]]:
    seen = list(states)
    for state in STATES:
        yield state, seen.count(state)
