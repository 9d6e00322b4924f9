"""One online volume move measured for `softudc bench volumes` (issue 13 item 6, `move` entries):
the copy's achieved rate at a limit (or adaptive) and how much the guest's disk latency grew
while it ran.

`move_once(lab, vid, to, diskrate, limit_mbps=... | adaptive=True)` asks the manager for the move
(POST /v1/volumes/VID/move), measures the guest's 4 KiB read latency at queue depth 1 before the
move and over and over while it copies (guest/init /cgi-bin/diskrate?iops=N: "ops=N ms=T"), and
returns {limit_mbps, achieved_mbps, guest_latency_inflation_pct, seconds, bytes}: achieved is the
rate the VM's host measured over the whole copy (bytes copied, the guest's writes meanwhile
included, over the copy's time), the inflation the mean latency during the copy over the one
before, in percent. `vid` must be a remote volume of a running VM; it ends on `to`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from softudc.lab import Lab
from softudc.lab.manager import call

PROBE_OPS = 100  # 4 KiB reads per latency sample (a few seconds under TCG)


def latency_ms(answer: str) -> float | None:
    """Mean ms per read from diskrate's "ops=N ms=T" (None: not such an answer, or no reads)."""
    fields = dict(part.split("=", 1) for part in answer.split() if "=" in part)
    try:
        ops, ms = int(fields["ops"]), int(fields["ms"])
    except (KeyError, ValueError):
        return None
    return ms / ops if ops > 0 else None


def inflation_pct(before: float | None, during: list[float]) -> float | None:
    if not before or not during:
        return None
    return round((sum(during) / len(during) / before - 1.0) * 100.0, 1)


def _api(lab: Lab, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    status, answer = call(lab, method, path, None if body is None else json.dumps(body))
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {answer}")
    return answer


def move_once(lab: Lab, vid: str, to: str, diskrate: Callable[[str], str], limit_mbps: int | None = None,
              adaptive: bool = False, max_pct: int = 50, timeout: float = 600.0) -> dict[str, Any]:
    """Move `vid` to `to` once, measured (see the module's header); RuntimeError if it fails."""
    before = latency_ms(diskrate(f"iops={PROBE_OPS}"))
    body: dict[str, Any] = {"to": to}
    body.update({"adaptive": True, "max_latency_inflation_pct": max_pct} if adaptive else
                {"limit_mbps": limit_mbps} if limit_mbps else {})
    t0 = time.monotonic()
    move = _api(lab, "POST", f"/v1/volumes/{vid}/move", body)
    during: list[float] = []
    while move["state"] not in ("done", "failed"):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"bench: the move of {vid} to {to} did not end within {timeout:.0f} s: {move}")
        if move["state"] == "copying" and (lat := latency_ms(diskrate(f"iops={PROBE_OPS}"))) is not None:
            during.append(lat)
        else:
            time.sleep(0.5)
        move = _api(lab, "GET", f"/v1/volumes/{vid}/move")
    if move["state"] == "failed":
        raise RuntimeError(f"bench: the move of {vid} to {to} failed: {move.get('error')}")
    return {"limit_mbps": None if adaptive else limit_mbps, "adaptive": adaptive,
            "achieved_mbps": round(move["rate_bps"] / 1e6, 2) if move.get("rate_bps") else None,
            "guest_latency_inflation_pct": inflation_pct(before, during),
            "guest_latency_ms": {"before": before, "during": round(sum(during) / len(during), 3) if during else None},
            "seconds": round(time.monotonic() - t0, 1), "bytes": move.get("end_bytes")}
