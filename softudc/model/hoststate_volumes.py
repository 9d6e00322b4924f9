"""The volumes in the host contract (contract 3, issue 13; softudc/model/hoststate.py has the rest):
what a storage host holds and reports, a VM's disks (network, local, mirrored, moving), and what a
storage host is told to hold.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from softudc.model.contracttypes import (
    MAX_VMS,
    Address,
    Count,
    Document,
    Given,
    Name,
    Number,
    Positive,
    Text,
)

VolumeName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,126}$")]  # gatekeeper/volumes/pool.py
ImageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")]  # volumes/from_image.py


class StoragePool(Document):
    """The host's storage pool (gatekeeper/volumes): what it holds and what it could still take."""

    capacity_bytes: Given[Count] = None
    free_bytes: Given[Count] = None


class HeldVolume(Document):
    """A volume of this host's pool (contract 3), and its NBD+TLS export if it has one (`port`
    absent: not exported): the manager tells the VMs' hosts where to connect."""

    address: Given[Address] = None
    port: Given[Annotated[int, Field(ge=1, le=65535)]] = None
    allowed: list[Name] = Field(default_factory=list, max_length=MAX_VMS)


class MirrorHealth(Document):
    """A mirrored volume a VM here opens (gatekeeper/volumes/mirror.py): each replica's health in
    its quorum, and how far the rebuild of a new one is (0..1)."""

    replicas: dict[Name, Literal["healthy", "failed", "rebuilding"]] = Field(default_factory=dict, max_length=4)
    progress: Given[Annotated[float, Field(ge=0, le=1)]] = None


class DiskMove(Document):
    """A running VM's remote disk being moved to another storage host (issue 13 item 4): the VM's
    host copies the disk into `host`'s export at `address`:`port` (a libvirt block copy, the guest
    reading and writing on), at most `limit_mbps` MB/s, or `adaptive`: as fast as the guest's disk
    latency allows (within `max_latency_inflation_pct` of before the copy); then switches over to it.
    `id` names the move (softudc/manager/volume_moves.py)."""

    id: Name
    host: Name
    address: Address
    port: Annotated[int, Field(ge=1, le=65535)]
    limit_mbps: Annotated[int, Field(ge=1, le=100_000)] | None = None
    adaptive: bool = False
    max_latency_inflation_pct: Annotated[int, Field(ge=1, le=10_000)] = 50


class DiskMoveReport(Document):
    """How a disk move this host carries out stands (gatekeeper/volumes/move.py): `pivoted` once
    the VM's disk is the destination's export; bytes copied of the disk's, the rate of the last
    seconds, the speed limit the job runs at, the guest's disk latency inflation (adaptive)."""

    id: Name
    vm: Name
    to: Name
    state: Literal["copying", "ready", "pivoted", "failed"]
    cur_bytes: Count = 0
    end_bytes: Count = 0
    rate_bps: Given[Number] = None
    speed_bps: Given[Count] = None
    latency_inflation_pct: Given[Number] = None
    error: Given[Text] = None


class DesiredReplica(Document):
    """A replica of a mirrored volume (softudc/manager/volume_replicas.py): the pool volume
    `volume` (`<id>.r<N>`) on `host`, exported over NBD+TLS at `address`:`port`."""

    volume: VolumeName
    host: Name
    address: Address
    port: Annotated[int, Field(ge=1, le=65535)]


class DesiredDisk(Document):
    """A volume the VM sees as a virtio disk (contract 3): this host's pool file (`local`), or the
    storage `host`'s NBD+TLS export at `address`:`port` (absent while the volume is not placed or
    its host has not reported the export: the VM is not started before)."""

    volume: VolumeName
    target: Annotated[str, StringConstraints(pattern=r"^vd[b-z]$")]
    host: Name | None = None  # None: not placed yet (the VM waits)
    local: bool = False
    address: Address | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    move: DiskMove | None = None  # being moved to another storage host (issue 13 item 4)
    # A mirrored volume (gatekeeper/volumes/mirror.py): its replicas exported so far; the VM's host
    # serves them as one disk (a quorum); address/port are the first one's once two are exported.
    replicas: list[DesiredReplica] = Field(default_factory=list, max_length=2)
    iops: Positive | None = None  # QoS: libvirt iotune total_iops_sec
    mbps: Positive | None = None  # QoS: libvirt iotune total_bytes_sec = mbps * 10^6


class DesiredVolume(Document):
    """A volume this host's storage service holds (contract 3): made empty, or as a copy-on-write
    clone of the pool volume `backing`; exported over NBD+TLS to `allowed` (empty: not exported);
    `keep`: left in the pool when the manager stops wanting it (a farm deleted)."""

    name: VolumeName
    size_bytes: Positive
    backing: VolumeName | None = None
    allowed: list[Name] = Field(default_factory=list, max_length=MAX_VMS)
    keep: bool = False
    # An encrypted volume's LUKS passphrase (softudc/manager/volume_keys.py): handed to its qsd as
    # a QMP secret, never logged nor written to the host's disk. None: a plain volume.
    key: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(default=None, repr=False)
    # issue 13 item 3 (gatekeeper/volumes/snapshots.py): made by freezing the pool volume
    # `snapshot_of` (an external snapshot: that volume goes on in an overlay over this one);
    # `drop`: unexport and delete it now (a volume the manager deletes); `flatten`: copy its backing
    # chain into it in the background (the chain reached the manager's soft depth limit).
    snapshot_of: VolumeName | None = None
    drop: bool = False
    flatten: bool = False
    # `from: image` (gatekeeper/volumes/from_image.py): made as a copy of this image, grown to size_bytes.
    image: ImageName | None = None
