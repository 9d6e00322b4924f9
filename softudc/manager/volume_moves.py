"""Online moves of a farm's remote volume to another storage host (issue 13 item 4): the manager's
record of each move and what it means for the volumes' placements and the hosts' desired states.

    store kind `volume-move`, name = the volume's id:
      spec   {id, volume, from, to, limit_mbps | adaptive + max_latency_inflation_pct, requested_at}
      status {state: done, at}   (written once the VM's host has said `pivoted`)

How a move runs (each step a desired state the hosts converge to, so a restart anywhere resumes it):

1. requested (`request`, checked first: a held remote volume of a running VM, a destination with
   pool room other than where it is, one move at a time): the destination is told to hold an
   empty volume of the same size, exported to the VM's host (`destination_volumes`);
2. once the destination reports that export admitting the VM's host, the VM's host gets the disk's
   `move` (`disk_move`) and copies it there by a libvirt block copy (gatekeeper/volumes/move.py),
   reporting progress (`disk_moves` in its report);
3. once it reports `pivoted` (the VM's disk is the destination's export), the volume is placed on
   the destination (`placements`) and the source, no longer wanted, unexports and deletes its copy
   after its grace period. The record stays (`done`) so the placement cannot flip back while both
   hosts still report the volume; it is dropped once the source no longer does (`prune`).

Pure but for `records`, `request`, `finish` (the store). A VM that does not run is not moved this
way (the destination would have to pull the data itself: not in this version).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from softudc.manager.errors import ApiError
from softudc.manager.store import Obj, Store

KIND = "volume-move"
MAX_LIMIT_MBPS = 100_000
DEFAULT_INFLATION_PCT = 50


@dataclass(frozen=True)
class Move:
    id: str
    volume: str
    source: str  # the host it moves from
    to: str
    limit_mbps: int | None = None
    adaptive: bool = False
    max_latency_inflation_pct: int = DEFAULT_INFLATION_PCT
    requested_at: float = 0.0
    done: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "volume": self.volume, "from": self.source, "to": self.to,
                "limit_mbps": self.limit_mbps, "adaptive": self.adaptive,
                "max_latency_inflation_pct": self.max_latency_inflation_pct, "requested_at": self.requested_at}


def from_obj(obj: Obj) -> Move:
    s = obj.spec
    return Move(str(s["id"]), obj.name, str(s["from"]), str(s["to"]), s.get("limit_mbps"), bool(s.get("adaptive")),
                int(s.get("max_latency_inflation_pct", DEFAULT_INFLATION_PCT)), float(s.get("requested_at", 0.0)),
                obj.status.get("state") == "done")


def records(store: Store) -> dict[str, Move]:
    """Every stored move, by volume id."""
    return {o.name: from_obj(o) for o in store.objects(KIND)}


def entry(reports: Mapping[str, dict[str, Any]], move: Move) -> dict[str, Any] | None:
    """What a host reports of this move (its `disk_moves` entry with the move's id), if any."""
    for report in reports.values():
        e = (report.get("disk_moves") or {}).get(move.volume)
        if isinstance(e, dict) and e.get("id") == move.id:
            return e
    return None


def pivoted(reports: Mapping[str, dict[str, Any]], move: Move) -> bool:
    return move.done or (entry(reports, move) or {}).get("state") == "pivoted"


def in_flight(reports: Mapping[str, dict[str, Any]], move: Move) -> bool:
    """Copying (or about to): neither switched over nor failed on the VM's host."""
    return not pivoted(reports, move) and (entry(reports, move) or {}).get("state") != "failed"


def placements(moves: Mapping[str, Move], reports: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """Volume id -> its host while moves are recorded: the source until the VM's host has pivoted
    onto the destination, the destination from then on (never what the reports happen to list
    first while both hosts hold it)."""
    return {vid: m.to if pivoted(reports, m) else m.source for vid, m in moves.items()}


def export_of(reports: Mapping[str, dict[str, Any]], host: str, vid: str) -> dict[str, Any]:
    """`host`'s report of volume `vid` ({address, port, allowed} when exported; {} if not held)."""
    v = ((reports.get(host) or {}).get("volumes") or {}).get(vid)
    return v if isinstance(v, dict) else {}


def disk_move(move: Move | None, reports: Mapping[str, dict[str, Any]], vm_host: str) -> dict[str, Any] | None:
    """The DesiredDisk `move` of the VM's host: once the destination exports the volume to it."""
    if move is None:
        return None
    export = export_of(reports, move.to, move.volume)
    if not export.get("port") or not export.get("address") or vm_host not in export.get("allowed", []):
        return None
    out: dict[str, Any] = {"id": move.id, "host": move.to, "address": export["address"], "port": export["port"]}
    if move.adaptive:
        out.update(adaptive=True, max_latency_inflation_pct=move.max_latency_inflation_pct)
    elif move.limit_mbps:
        out["limit_mbps"] = move.limit_mbps
    return out


def destination_volumes(moves: Mapping[str, Move], reports: Mapping[str, dict[str, Any]], host: str,
                        sizes: Mapping[str, tuple[int, tuple[str, ...], bool]]) -> list[dict[str, Any]]:
    """The DesiredState `volumes` `host` holds as a move's destination before the switch-over:
    empty, the volume's size (a flat copy: no backing file), exported to the volume's readers.
    `sizes`: volume id -> (size_bytes, allowed, keep) as planned."""
    out = []
    for vid, m in sorted(moves.items()):
        if m.to == host and vid in sizes and not pivoted(reports, m):
            size, allowed, keep = sizes[vid]
            out.append({"name": vid, "size_bytes": size, "allowed": list(allowed), "keep": keep})
    return out


def status(move: Move, reports: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The move as the API shows it: requested | copying | ready | pivoted | done | failed, with
    the VM's host's figures (bytes copied of the total, rate, speed limit, latency inflation)."""
    e = entry(reports, move) or {}
    state = "done" if move.done else str(e.get("state", "requested"))
    figures = ("cur_bytes", "end_bytes", "rate_bps", "speed_bps", "latency_inflation_pct", "error")
    progress: dict[str, Any] = {k: e[k] for k in figures if k in e}
    return {**move.as_json(), "state": state, **progress}


def check(row: dict[str, Any], to: str, limit_mbps: int | None, adaptive: bool,
          free: Mapping[str, int], running: bool) -> None:
    """Why `row` (a volume as GET /v1/volumes shows it) cannot move to `to` now (ApiError), if so."""
    vid = row["id"]
    if row["class"] != "remote":
        raise ApiError(409, f"volume {vid} is {row['class']}: only remote volumes move between storage hosts "
                            "(a local volume lives on its VM's host)")
    if row.get("encrypted"):
        raise ApiError(409, f"volume {vid} is encrypted: moving it is not supported in this version (its key "
                            "would have to follow it)")
    if row["state"] != "held" or not row.get("export"):
        raise ApiError(409, f"volume {vid} is {row['state']} on {row['host']}, not held and exported yet: "
                            "move it once `softudc volume describe` says held")
    if to == row["host"]:
        raise ApiError(409, f"volume {vid} is already on {to}")
    if to not in free:
        raise ApiError(409, f"{to} runs no storage service (no pool in its reports): choose one of "
                            f"{', '.join(sorted(free)) or 'none'}")
    if free[to] < row["size_bytes"]:
        raise ApiError(409, f"{to}'s pool has {free[to]} bytes free, volume {vid} needs {row['size_bytes']}")
    if limit_mbps is not None and adaptive:
        raise ApiError(400, "give either a limit (limit_mbps) or adaptive, not both")
    if limit_mbps is not None and not 1 <= limit_mbps <= MAX_LIMIT_MBPS:
        raise ApiError(400, f"limit_mbps {limit_mbps}: expected 1..{MAX_LIMIT_MBPS} (MB/s)")
    if not running:
        raise ApiError(409, f"volume {vid}'s VM {row['instance']} is not running on {row['vm_host']}: a volume "
                            "moves by its VM's host copying it live (start the VM first)")


def request(store: Store, row: dict[str, Any], to: str, limit_mbps: int | None, adaptive: bool,
            max_pct: int, free: Mapping[str, int], reports: Mapping[str, dict[str, Any]], running: bool,
            now: float | None = None) -> Move:
    """Record a move of `row`'s volume to `to` (checked: `check`); one in flight is refused (a
    failed one may be asked for again)."""
    vid = row["id"]
    old = store.get(KIND, vid)
    if old is not None and not old.deleted and (was := from_obj(old)) and status(was, reports)["state"] not in (
            "done", "failed"):
        raise ApiError(409, f"volume {vid} is being moved to {was.to} already (move {was.id}): "
                            f"wait for it (`softudc volume describe {vid}`)")
    check(row, to, limit_mbps, adaptive, free, running)
    if not 1 <= max_pct <= 10_000:
        raise ApiError(400, f"max_latency_inflation_pct {max_pct}: expected 1..10000 (percent)")
    at = time.time() if now is None else now
    move = Move(f"m{int(at * 1000):x}", vid, row["host"], to, limit_mbps, adaptive, max_pct, at)
    store.put(KIND, vid, {k: v for k, v in move.as_json().items() if k != "volume"})
    store.set_status(KIND, vid, {"state": "requested"})  # a put keeps the status: the move before was done
    store.event(KIND, vid, "Requested", f"move of {vid} from {move.source} to {to} "
                + ("(adaptive)" if adaptive else f"at {limit_mbps} MB/s" if limit_mbps else "(no limit)"))
    return move


def finish(store: Store, moves: Mapping[str, Move], reports: Mapping[str, dict[str, Any]]) -> None:
    """Record `done` for the moves whose VM's host has pivoted; drop done ones the source no longer
    holds (both hosts reporting the volume is what the record guards against)."""
    for vid, m in moves.items():
        if not m.done and pivoted(reports, m):
            store.set_status(KIND, vid, {"state": "done", "at": time.time()})
            store.event(KIND, vid, "Moved", f"{vid} now on {m.to} (from {m.source})")
        elif m.done and "volumes" in (reports.get(m.source) or {}) and vid not in reports[m.source]["volumes"]:
            store.delete(KIND, vid)
