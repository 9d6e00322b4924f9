"""The contract between the manager and its gatekeepers: what a host should run, what it reports,
and how a VM of a farm is named on a host. Both sides import this module; nothing reads these
documents by string key any more (review 1.3).

    DesiredState   GET /v1/hosts/{name}/desired, manager -> gatekeeper
      {contract, etag,
       vnets: [{id, farm, name, security, mtu, keys: {send_epoch, secrets: {epoch: hex}}, members}],
       vms:   [{name, vcpus, memory_mib, nics: [{vnet, mac, ip, peers}],
                incoming | outgoing | migrate_to: {host, uri, attempt, downtime_ms} | restart_departed,
                disks: [{volume, target, host, local | address, port, iops, mbps,
                         move: {id, host, address, port, limit_mbps | adaptive},
                         replicas: [{volume, host, address, port}]}]}],  (contract 3; replicas: mirrored)
       volumes: [{name, size_bytes, backing, allowed, keep, key}]}             (contract 3)
    HostReport     PUT /v1/hosts/{name}/status, gatekeeper -> manager
      {contract, vcpus, memory_mib, state, migration_uri, underlay, vnets, dataplane,
       running, prepared, errors, notes, sizes: {vm: [vCPUs, MiB]},
       migrations: {vm: MigrationJob}, arrivals: {vm: Arrival}, departed: {vm: Departure},
       load: HostLoad (+ usage: {vm: VmUsage}, cumulative counters),
       volumes: {name: HeldVolume {address, port, allowed}} (contract 3),
       disk_moves: {volume: DiskMoveReport {id, vm, to, state, cur_bytes, end_bytes, ...}} (contract 3),
       mirrors: {volume: MirrorHealth {replicas: {name: healthy|failed|rebuilding}, progress}} (contract 3)}

Versions: each document carries `contract` (absent: 1, what gatekeepers before it send and read).
A side reads every version in SERVED and refuses a newer one, saying which side to upgrade. A rolling
upgrade goes managers first: a manager serves each host the desired state in the version its report
claims (`DesiredState.as_json(version)`), so older gatekeepers keep working meanwhile.
Contract 3 (issue 13) adds the volumes: a storage host's `volumes` to hold and export, a VM's
`disks`, a report's `volumes`; a version-2 gatekeeper gets neither (its VMs start without disks).

Every document is bounded (entries, string lengths), strict (no "8" for 8, no true for 1) and
closed (an unknown field is refused, so a typo or a newer peer is noticed, not ignored).
`parse` returns the model or raises ContractError naming every problem (at most MAX_PROBLEMS).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import Field, StringConstraints, ValidationError
from pydantic_core import ErrorDetails

from softudc.model.contracttypes import HOST_CAPACITY_MAX as HOST_CAPACITY_MAX  # importers find these here
from softudc.model.contracttypes import (
    MAX_MESSAGES,
    MAX_PEERS,
    MAX_VNETS,
    MAX_WORKERS,
    Address,
    Count,
    Document,
    Epoch,
    Given,
    Hex,
    HostMemoryMib,
    HostVcpus,
    Mac,
    Name,
    Number,
    Positive,
    Size,
    Text,
    Uri,
    VnetId,
)
from softudc.model.contracttypes import MAX_NAME as MAX_NAME
from softudc.model.contracttypes import MAX_TEXT as MAX_TEXT
from softudc.model.contracttypes import MAX_VMS as MAX_VMS
from softudc.model.hoststate_volumes import DesiredDisk as DesiredDisk  # contract 3's volumes, found here too
from softudc.model.hoststate_volumes import DesiredReplica as DesiredReplica
from softudc.model.hoststate_volumes import DesiredVolume as DesiredVolume
from softudc.model.hoststate_volumes import DiskMove as DiskMove
from softudc.model.hoststate_volumes import (
    DiskMoveReport,
    HeldVolume,
    MirrorHealth,
    StoragePool,
)

CONTRACT_VERSION = 3  # what this side speaks
SERVED = (1, 2, 3)  # what this side reads (a manager serves desired states in each of these too)
MAX_PROBLEMS = 50  # the first fifty say enough

# --- the VM naming rule -----------------------------------------------------------------------

SEPARATOR = "--"  # joins farm and instance; a farm descriptor refuses it inside either name


def vm_name(farm: str, instance: str) -> str:
    """The domain name of `instance` of `farm` on a host: how a host tells the manager's VMs apart."""
    return f"{farm}{SEPARATOR}{instance}"


def split_vm_name(name: str) -> tuple[str, str] | None:
    """(farm, instance) of a name made by `vm_name`, None for anything else. Exact, since neither
    part may contain the separator (audit R24)."""
    parts = name.split(SEPARATOR)
    return (parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


def is_managed(name: str) -> bool:
    """A domain the manager may have made (gatekeepers stop such domains they are not told to run;
    anything else on the host is left alone)."""
    return SEPARATOR in name


def nic_mac(farm: str, instance: str, vnet: str, attempt: int = 0) -> str:
    """A locally administered MAC from the names: stable across migrations and re-applies.
    `attempt` > 0 picks another one when the first is taken on the VNET (the planner allocates)."""
    seed = f"{farm}/{instance}/{vnet}" + (f"/{attempt}" if attempt else "")
    digest = hashlib.sha256(seed.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


# --- bounds and field types -------------------------------------------------------------------

# What a host's migration job is in, as its reports say (the manager maps these onto its own
# migration table): starting (libvirt asked), copying, then completed | failed | unknown (ended with
# an error while the VM no longer runs here: it may run at the destination), recovered (a job
# libvirt carried on while the gatekeeper restarted, followed rather than restarted).
JobState = Literal["starting", "copying", "completed", "failed", "unknown", "recovered"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
JOB_ENDED: tuple[JobState, ...] = ("completed", "failed", "unknown")  # a job in one of these states is over
WorkerState = Literal["running", "restarting", "dead"]


# --- what a host reports ----------------------------------------------------------------------

class MigrationJob(Document):
    """An outgoing migration this host was asked for (the latest attempt per VM)."""

    attempt: Given[Name] = None
    to: Given[Name] = None  # the destination host
    state: Given[JobState] = None
    error: Text | None = None
    started: Given[Number] = None  # wall clock
    ended: Given[Number] = None  # the host's monotonic clock
    wall_ms: Number | None = None
    data_total: Number | None = None
    data_processed: Number | None = None
    recovered: Given[bool] = None


class Arrival(Document):
    """libvirt's record of an incoming migration, once the VM runs here."""

    downtime_ms: Number | None = None
    total_ms: Number | None = None
    data_total: Number | None = None
    error: Text | None = None


class Departure(Document):
    """A VM that left by migration and is not restarted here without the manager's word (R12)."""

    attempt: Given[Name] = None
    to: Given[Uri] = None  # the destination host (a local-API migration: its URI)
    ago_s: Number | None = None


class Dataplane(Document):
    """The forwarding threads (audit R2)."""

    workers: dict[Annotated[str, StringConstraints(max_length=64)], WorkerState] = Field(
        default_factory=dict, max_length=MAX_WORKERS)
    restarts: Given[Count] = None
    healthy: Given[bool] = None


class LoadWindow(Document):
    """A figure smoothed over a short (~1 min) and a long (~10 min) window (gatekeeper/load.py)."""

    short: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    long: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class LoadFigures(Document):
    """CPU cores in use and memory MiB in use, each as a LoadWindow."""

    cpu_cores: LoadWindow
    memory_mib: LoadWindow


class NetCounters(Document):
    """One NIC's cumulative bytes since its domain started, by the VNET it is on (gatekeeper/usage.py)."""

    vnet: VnetId
    rx_bytes: Count
    tx_bytes: Count


class VmUsage(Document):
    """A domain's cumulative counters, for usage accounting (softudc/manager/usage.py): `id` tells
    one start of the domain from the next (uuid/libvirt id; empty when the driver gives none),
    `cpu_ns` its CPU time, `memory_mib` what it holds now, `net` its VNET NICs' bytes."""

    id: Annotated[str, StringConstraints(max_length=80)] = ""
    cpu_ns: Count
    memory_mib: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    net: list[NetCounters] = Field(default_factory=list, max_length=64)


class HostLoad(Document):
    """What the host's VMs use (issue 12): `at` the sample's wall-clock time, `samples` how many the
    figures are made of, `host` the sum over `vms`. Never part of a heartbeat's comparison
    (softudc/manager/load.py keeps it apart)."""

    at: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    samples: Count
    host: LoadFigures
    vms: dict[Name, LoadFigures] = Field(default_factory=dict, max_length=MAX_VMS)
    usage: Given[dict[Name, VmUsage]] = Field(None, max_length=MAX_VMS)  # issue 15: cumulative, every domain


class HostReport(Document):
    """What a gatekeeper says of its host. Every field may be left out (a host that has not said
    something has not said it); none may be null."""

    contract: Annotated[int, Field(ge=1)] = 1
    vcpus: Given[HostVcpus] = None
    memory_mib: Given[HostMemoryMib] = None
    state: Given[Literal["ready", "degraded"]] = None  # degraded: a forwarding thread is down
    migration_uri: Given[Uri] = None
    underlay: Given[Address] = None  # VNET member lists (audit R18)
    vnets: Given[list[VnetId]] = Field(None, max_length=MAX_VNETS)  # carried here (an admin's port too)
    dataplane: Given[Dataplane] = None
    running: Given[list[Name]] = Field(None, max_length=MAX_VMS)
    prepared: Given[list[Name]] = Field(None, max_length=MAX_VMS)  # incoming VMs whose VNETs are made
    errors: Given[list[Text]] = Field(None, max_length=MAX_MESSAGES)
    notes: Given[list[Text]] = Field(None, max_length=MAX_MESSAGES)  # kept on purpose, worth knowing
    sizes: Given[dict[Name, Size]] = Field(None, max_length=MAX_VMS)  # every managed domain, any state
    migrations: Given[dict[Name, MigrationJob]] = Field(None, max_length=MAX_VMS)
    arrivals: Given[dict[Name, Arrival]] = Field(None, max_length=MAX_VMS)
    departed: Given[dict[Name, Departure]] = Field(None, max_length=MAX_VMS)
    pool: Given[StoragePool] = None  # issue 13: only a host running the storage service says it
    load: Given[HostLoad] = None  # issue 12: changes every report, kept out of the heartbeat comparison
    volumes: Given[dict[Name, HeldVolume]] = Field(None, max_length=MAX_VMS)  # contract 3: the pool's volumes
    disk_moves: Given[dict[Name, DiskMoveReport]] = Field(None, max_length=MAX_VMS)  # volume -> its move here
    mirrors: Given[dict[Name, MirrorHealth]] = Field(None, max_length=MAX_VMS)  # mirrored volumes opened here


# --- what a host should run -------------------------------------------------------------------

class VnetKeys(Document):
    """A VNET's master secrets by epoch and the epoch to send with (softudc/manager/vnetkeys.py)."""

    send_epoch: Annotated[int, Field(ge=0, le=65535)]
    secrets: dict[Epoch, Hex] = Field(max_length=16)


class DesiredVnet(Document):
    id: VnetId
    farm: Name | None = None
    name: Name | None = None
    security: Literal["none", "auth", "conf"] = "none"
    mtu: Annotated[int, Field(ge=576, le=9000)] | None = None  # None: the gatekeeper's default
    keys: VnetKeys | None = None
    # The underlay addresses of the hosts with an instance on it; None: the gatekeeper's configured ones.
    members: list[Address] | None = Field(None, max_length=MAX_VMS)


class DesiredNic(Document):
    vnet: VnetId
    mac: Mac
    ip: Address | None = None  # address/prefix; None while the farm's plan has none
    peers: list[Address] = Field(default_factory=list, max_length=MAX_PEERS)  # the other instances on it


class MigrateTo(Document):
    """On the source: migrate to `host` at `uri`, once per `attempt`."""

    host: Name
    uri: Uri
    attempt: Name
    downtime_ms: Count = 0  # 0: libvirt's default


class DesiredVm(Document):
    name: Name
    vcpus: Positive
    memory_mib: Positive
    nics: list[DesiredNic] = Field(default_factory=list, max_length=64)
    incoming: bool = False  # arriving by migration: its VNETs are made, the VM is left to libvirt
    outgoing: bool = False  # soon migrated from here: the destination is making its VNETs
    migrate_to: MigrateTo | None = None
    restart_departed: Name | None = None  # it left by this attempt; booting it here again is safe
    disks: list[DesiredDisk] = Field(default_factory=list, max_length=8)  # contract 3


class DesiredState(Document):
    contract: Annotated[int, Field(ge=1)] = 1
    etag: Annotated[str, StringConstraints(max_length=64)] | None = None
    vnets: list[DesiredVnet] = Field(default_factory=list, max_length=MAX_VNETS)
    vms: list[DesiredVm] = Field(default_factory=list, max_length=MAX_VMS)
    volumes: list[DesiredVolume] = Field(default_factory=list, max_length=MAX_VMS)  # contract 3

    def for_contract(self, version: int) -> dict[str, Any]:
        """The document as a gatekeeper speaking `version` reads it: version 1 knows no `contract`
        (it ignores unknown fields, so sending it would do no harm; leaving it out keeps the
        answer exactly what such a gatekeeper always got)."""
        out = self.as_json()
        if version < 3:  # volumes and disks are contract 3's: an older gatekeeper would refuse them
            out.pop("volumes", None)
            for vm in out.get("vms", []):
                vm.pop("disks", None)
        if version < 2:
            out.pop("contract", None)
        else:
            out["contract"] = min(version, CONTRACT_VERSION)
        return out


# --- validation with every problem named ------------------------------------------------------

class ContractError(ValueError):
    """A document that does not follow the contract; `problems` names each thing wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


Doc = TypeVar("Doc", bound=Document)

# Who sent what, for the advice in messages.
_SENDER = {"HostReport": ("gatekeeper", "manager"), "DesiredState": ("manager", "gatekeeper")}


def parse(model: type[Doc], data: Any) -> Doc:
    """`data` (a parsed JSON object) as `model`, or ContractError naming every problem. A newer
    contract version than this side knows is refused as a whole, saying which side to upgrade."""
    sender, reader = _SENDER.get(model.__name__, ("sender", "reader"))
    if not isinstance(data, dict):
        raise ContractError([f"expected a JSON object, got {_kind(data)}"])
    version = data.get("contract", 1)
    if type(version) is int and version > CONTRACT_VERSION:
        fix = "upgrade the managers first, then the gatekeepers" if sender == "gatekeeper" else \
            "upgrade this gatekeeper (managers go first in a rolling upgrade)"
        raise ContractError([f"contract: this {sender} speaks contract {version}, this {reader} only "
                             f"{', '.join(map(str, SERVED))}: {fix}"])
    if type(version) is int and version < SERVED[0]:
        raise ContractError([f"contract: {version} is no longer served (this {reader} reads "
                             f"{', '.join(map(str, SERVED))}): upgrade the {sender}"])
    try:
        doc = model.model_validate(data)
    except ValidationError as e:
        hint = f"a newer {sender}'s field? upgrade the managers first" if sender == "gatekeeper" else \
            f"a newer {sender}'s field? upgrade this {reader}"
        version = version if type(version) is int else 1
        # Formatted only as many as are kept (a big hostile document may hold thousands of errors).
        raise ContractError(_dedup([problem(err, version, hint) for err in e.errors()[:2 * MAX_PROBLEMS]])) from None
    return doc


def problems_of(model: type[Document], data: Any) -> list[str]:
    """Everything wrong with `data` as `model` (empty: it follows the contract)."""
    try:
        parse(model, data)
    except ContractError as e:
        return e.problems
    return []


def _dedup(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))[:MAX_PROBLEMS]


_TYPES = {"int_type": "int", "string_type": "str", "list_type": "list", "dict_type": "dict", "model_type": "dict",
          "model_attributes_type": "dict", "bool_type": "bool", "float_type": "number", "number_type": "number",
          "none_required": "null", "int_from_float": "int"}
# Fields whose value is a list or map of entries: a wrong entry is said as such.
_ENTRIES = ("running", "prepared", "errors", "notes", "vnets", "sizes", "migrations", "arrivals", "departed",
            "nics", "peers", "members", "secrets", "workers", "volumes", "disks", "allowed")


def problem(err: ErrorDetails, version: int, hint: str) -> str:
    """One pydantic error as a sentence that says where, what came and what was expected."""
    loc = err["loc"]
    where = ".".join(str(p) for p in loc) or "(the document)"
    kind, got, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in _TYPES:
        return _wrong_type(loc, where, _TYPES[kind], got)
    if kind == "extra_forbidden":
        return f"{where}: unknown field in contract {version} ({hint})"
    if kind == "null":
        return f"{where}: {err['msg']}"
    if kind == "missing":
        return f"{where}: missing (required)"
    if kind == "literal_error":
        return f"{where}: {_brief(got)} is not one of {ctx.get('expected')}"
    if kind == "greater_than" and ctx.get("gt") == 0:
        return f"{where}: {_brief(got)} must be positive"
    if kind == "too_long":  # a map stops counting at its bound: its length may be unknown
        n = ctx.get("actual_length")
        return f"{where}: {'more than ' + str(ctx.get('max_length')) if n is None else n} entries, " \
               f"at most {ctx.get('max_length')}"
    if kind in ("string_too_long", "string_too_short"):
        return f"{where}: {len(got) if isinstance(got, str) else '?'} characters, {err['msg'].lower()}"
    return f"{where}: {_brief(got)}, {err['msg'][:1].lower()}{err['msg'][1:]}"


def _wrong_type(loc: tuple[int | str, ...], where: str, want: str, got: Any) -> str:
    """A value of the wrong type: a top-level field, an entry of a list or map, or a nested field."""
    if len(loc) == 1:
        return f"{where}: expected {want}, got {_kind(got)}"
    if loc[-2] in _ENTRIES:
        field = ".".join(str(p) for p in loc[:-1])
        return f"{field}: every entry must be a {want}, not {loc[-2]}[{loc[-1]!r}] ({_brief(got)})"
    return f"{where}: {_brief(got)}, expected {want}"


def _kind(value: Any) -> str:
    return type(value).__name__


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
