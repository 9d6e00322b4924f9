"""Mirrored volumes' replicas (issue 13, `class: mirrored`): where the two replicas live, which one
to rebuild, and how healthy the volume is. Pure: the caller hands in the hosts' reports.

A mirrored volume `<farm>--<instance>--<volume>` is two ordinary pool volumes, its replicas
`<id>.r<N>`, on two different storage hosts (not the VM's host when another has room), each
exported over NBD+TLS to the farm's hosts like a remote volume. The VM's host joins them in a
quorum (gatekeeper/volumes/mirror.py) and reports each replica's health in its report's
`mirrors: {id: {replicas: {name: healthy|failed|rebuilding}, progress}}`.

A replica is lost when its host is `down` (no report for the manager's HOST_DOWN_AFTER_S) or when
a VM host's quorum says it failed (its NBD client saw its server go away: it missed writes, so it
is never taken back). The next replica, `.r<N+1>` (N: the highest number held or reported, so a
name is never used twice), goes to another host with room; the VM's host rebuilds it from the
quorum (`blockdev-mirror` in its daemon) and swaps it for the lost one. The lost replica is no
longer wanted: its host deletes it once it is back (after the storage service's grace).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from softudc.model.farm import Farm
from softudc.model.volume import volume_id

MIRRORED = "mirrored"
COPIES = 2
REPLICA_RE = re.compile(r"^(?P<vid>.+)\.r(?P<n>[0-9]{1,6})$")
HEALTHY, FAILED, REBUILDING, DEGRADED, PLANNED = "healthy", "failed", "rebuilding", "degraded", "planned"
DEAD_STATES = frozenset({"down", "fenced", "off"})


def replica_name(vid: str, n: int) -> str:
    return f"{vid}.r{n}"


def split_replica(name: str) -> tuple[str, int] | None:
    """'<id>.r3' -> ('<id>', 3); None for any other name."""
    m = REPLICA_RE.match(name)
    return (m.group("vid"), int(m.group("n"))) if m else None


@dataclass(frozen=True)
class ReplicaInputs:
    """What the reports say about replicas: `held` replica -> the host holding it, `dead` hosts,
    `failed` replicas (a VM host's quorum lost them), `known` replica names the quorums name."""

    held: dict[str, str]
    dead: frozenset[str]
    failed: frozenset[str]
    known: frozenset[str]

    @classmethod
    def from_reports(cls, reports: dict[str, dict[str, Any]]) -> ReplicaInputs:
        held: dict[str, str] = {}
        failed, known = set(), set()
        for host, r in sorted(reports.items()):
            for name in r.get("volumes") or {}:
                if split_replica(name) is not None:
                    held.setdefault(name, host)
            for m in (r.get("mirrors") or {}).values():
                for name, state in ((m or {}).get("replicas") or {}).items():
                    known.add(name)
                    if state == FAILED:
                        failed.add(name)
        dead = frozenset(h for h, r in reports.items() if r.get("state") in DEAD_STATES)
        return cls(held, dead, frozenset(failed), frozenset(known))


def choose_replicas(vid: str, size: int, vm_hosts: Iterable[str], inputs: ReplicaInputs,
                    room: dict[str, int]) -> tuple[list[tuple[str, str]], str]:
    """The volume's replicas as (name, host), at most COPIES on as many hosts, and why fewer (else
    ""). Keeps the live ones held, one per host (two come to share one when a replica placed but not
    yet reported is forgotten for a round and a new one goes beside it: CI at c16d081); adds new
    ones on other hosts (most room first, the VM's hosts after them and hosts that held a replica of
    it last: one that lost it may not be down yet); takes their room from `room`."""
    vm = set(vm_hosts)
    mine = sorted((s[1], name) for name in set(inputs.held) | inputs.known
                  if (s := split_replica(name)) is not None and s[0] == vid)
    keep: list[tuple[str, str]] = []
    used: set[str] = set()
    for k, name in mine:  # one per host, the oldest first: a second copy on one host protects nothing
        if len(keep) < COPIES and _usable(name, k, vid, inputs, room) and inputs.held[name] not in used:
            keep.append((name, inputs.held[name]))
            used.add(inputs.held[name])
    n = max((k for k, _ in mine), default=0) + 1
    lost = {inputs.held[name] for _, name in mine if name in inputs.held}  # hosts that held one: last
    while len(keep) < COPIES:
        fits = [h for h, free in room.items() if h not in used and h not in inputs.dead and free >= size]
        if not fits:
            return keep, (f"{len(keep)} of {COPIES} replicas placed: no other live host's pool has {size} bytes "
                          "free; add capacity or a storage host")
        host = min(fits, key=lambda h: (h in lost, h in vm, -room[h], h))
        keep.append((replica_name(vid, n), host))
        used.add(host)
        room[host] -= size
        n += 1
    return keep, ""


def _usable(name: str, n: int, vid: str, inputs: ReplicaInputs, room: dict[str, int]) -> bool:
    """A held replica on a live host, not failed, and current: once a VM host's quorum names the
    volume's replicas, one it does not name is current only if newer than all it names (placed,
    not rebuilt yet); an older one was replaced (its host may still report it until it is down)."""
    host = inputs.held.get(name)
    if host is None or host in inputs.dead or name in inputs.failed or host not in room:
        return False
    named = [s[1] for k in inputs.known if (s := split_replica(k)) is not None and s[0] == vid]
    return not named or name in inputs.known or n > max(named)


def volume_health(vid: str, replicas: list[tuple[str, str]], reports: dict[str, dict[str, Any]],
                  vm_hosts: Iterable[str]) -> dict[str, Any]:
    """What `softudc volume describe` shows: {state: healthy|degraded|rebuilding|planned,
    replicas: [{name, host, state}], progress} from the VM hosts' quorum reports."""
    seen: dict[str, str] = {}
    progress = None
    for host in sorted(set(vm_hosts)):
        m = ((reports.get(host) or {}).get("mirrors") or {}).get(vid)
        if m:
            seen.update(m.get("replicas") or {})
            progress = m.get("progress", progress)
    rows = [{"name": name, "host": host, "state": seen.get(name, PLANNED)} for name, host in replicas]
    states = {r["state"] for r in rows}
    if not seen:
        state = PLANNED
    elif REBUILDING in states or (PLANNED in states and len(rows) == COPIES):
        state = REBUILDING
    elif states == {HEALTHY} and len(rows) == COPIES:
        state = HEALTHY
    else:
        state = DEGRADED
    out: dict[str, Any] = {"state": state, "replicas": rows}
    if state == REBUILDING:
        out["progress"] = progress or 0.0
    return out


@dataclass(frozen=True)
class MirroredVolume:
    """A mirrored volume of an instance as placed: its replicas (name, host) and why fewer than two."""

    id: str
    size_bytes: int
    keep: bool
    vm_host: str
    allowed: tuple[str, ...]  # the farm's hosts: every replica's export admits them
    replicas: tuple[tuple[str, str], ...]
    reason: str = ""
    iops: int | None = None  # QoS of the VM's disk (libvirt iotune), as for any volume
    mbps: int | None = None


class Sized(Protocol):
    """A planned volume (softudc/manager/volumes.py PlacedVolume): its host and size."""

    @property
    def host(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...


def _farm_hosts(status: dict[str, Any]) -> tuple[str, ...]:
    hosts = {i["host"] for i in status.get("instances", [])}
    hosts |= {to for i in status.get("instances", []) if (to := (i.get("migrating") or {}).get("to"))}
    return tuple(sorted(hosts))


def place_mirrored(farms: Iterable[tuple[Farm, dict[str, Any]]], reports: dict[str, dict[str, Any]],
                   free: dict[str, int], planned: Iterable[Sized]) -> dict[str, MirroredVolume]:
    """Every mirrored volume's replicas, after the other volumes (`planned`) took their room."""
    room = dict(free)
    for v in planned:
        room[v.host] = room.get(v.host, 0) - v.size_bytes
    inputs = ReplicaInputs.from_reports(reports)
    out = {}
    for farm, status in farms:
        hosts = _farm_hosts(status)
        for inst in status.get("instances", []):
            for vm in farm.vms:
                for vol in vm.volumes if vm.name == inst.get("vm") else ():
                    if vol.cls != MIRRORED:
                        continue
                    vid = volume_id(farm.name, inst["name"], vol.name)
                    chosen, why = choose_replicas(vid, vol.size_bytes, hosts, inputs, room)
                    out[vid] = MirroredVolume(vid, vol.size_bytes, vol.keep, inst["host"], hosts, tuple(chosen), why,
                                              vol.iops, vol.mbps)
    return out


def replica_volumes(mirrored: dict[str, MirroredVolume], host: str) -> list[dict[str, Any]]:
    """The replicas `host` holds (entries of its DesiredState `volumes`)."""
    return [{"name": name, "size_bytes": m.size_bytes, "allowed": list(m.allowed), "keep": m.keep}
            for m in mirrored.values() for name, h in m.replicas if h == host]


def _export(reports: dict[str, dict[str, Any]], host: str, name: str) -> dict[str, Any]:
    v = ((reports.get(host) or {}).get("volumes") or {}).get(name)
    return v if isinstance(v, dict) else {}


def mirrored_disk(m: MirroredVolume, target: str, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A DesiredVm disk: the replicas exported so far; `address`/`port` (the first replica's) only
    once two are, so the VM waits (`vm.wait`) until its quorum can start."""
    replicas = []
    for name, host in m.replicas:
        e = _export(reports, host, name)
        if e.get("address") and e.get("port"):
            replicas.append({"volume": name, "host": host, "address": e["address"], "port": e["port"]})
    disk: dict[str, Any] = {"volume": m.id, "target": target, "replicas": replicas,
                            **{k: v for k, v in (("iops", m.iops), ("mbps", m.mbps)) if v}}
    if replicas:
        disk["host"] = replicas[0]["host"]
    if len(replicas) >= COPIES:
        disk.update(address=replicas[0]["address"], port=replicas[0]["port"])
    return disk


def admits(m: MirroredVolume, reports: dict[str, dict[str, Any]], host: str) -> bool:
    """Every replica's export admits `host` (a live migration's destination starts its own quorum)."""
    return all(host in _export(reports, h, name).get("allowed", []) for name, h in m.replicas)


def mirrored_rows(mirrored: dict[str, MirroredVolume], reports: dict[str, dict[str, Any]],
                  sizes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """GET /v1/volumes rows of the mirrored volumes: replicas and health (volume_health)."""
    rows = []
    for vid, m in sorted(mirrored.items()):
        health = volume_health(vid, list(m.replicas), reports, m.allowed)
        rows.append({**sizes.get(vid, {"id": vid}), "host": None, "vm_host": m.vm_host, "allowed": list(m.allowed),
                     "state": health["state"], "reason": m.reason, "export": None, "replicas": health["replicas"],
                     **({"progress": health["progress"]} if "progress" in health else {})})
    return rows
