"""`softudc bench volumes`, its `move` part: the running guest's remote volume moved between storage
hosts through the manager (`POST /v1/volumes/{id}/move`, vol-move's online moves) at several limits
and in adaptive mode, one after the other (h2 -> h3 -> h2 ...), while the guest reads 4 KiB blocks
at queue depth 1 (/cgi-bin/diskrate?iops) without pause.

Per move: achieved_mbps = the volume's bytes / the copy's time (from the first `copying` seen to
`ready`, `pivoted` or `done`, polled every POLL_S), total_s from the request to `done`, and
guest_latency_inflation_pct = the guest's mean 4 KiB read latency during the copy against before
it (the reads' own timing in the guest, 1 / IOPS).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.3
PROBE_OPS = 300  # per guest probe (~0.2 s)
MOVES: tuple[dict[str, Any], ...] = ({"limit_mbps": 10}, {"limit_mbps": 40}, {"adaptive": True})
API = Callable[[str, str, str | None], Any]


def probe_latency_ms(get: Callable[[str], str]) -> float | None:
    """The guest's mean 4 KiB read latency (ms) over one probe, None if it did not answer."""
    try:
        parts = dict(p.split("=", 1) for p in get(f"iops={PROBE_OPS}").split())
        return max(int(parts["ms"]), 10) / int(parts["ops"])
    except (ValueError, KeyError):
        return None


class Prober:
    """Probes the guest's read latency in a thread until stopped; the samples taken while `copying`."""

    def __init__(self, get: Callable[[str], str]) -> None:
        self.get, self.copying = get, False
        self.during: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            lat = probe_latency_ms(self.get)
            if lat is not None and self.copying:
                self.during.append(lat)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def inflation_pct(before: float, during: list[float]) -> float | None:
    if not during or before <= 0:
        return None
    return round((sum(during) / len(during) / before - 1) * 100, 1)


def one_move(api: API, vid: str, to: str, how: dict[str, Any], prober: Prober, before: float,
             timeout: float = 180.0) -> dict[str, Any]:
    """Move `vid` to `to` (`how`: limit_mbps or adaptive) and measure it."""
    t0 = time.monotonic()
    _post(api, vid, json.dumps({"to": to, **how}))
    copy_start = copy_end = None
    move: dict[str, Any] = {}
    prober.during = []
    while time.monotonic() - t0 < timeout:
        move = api("GET", f"/v1/volumes/{vid}/move", None)
        state = move.get("state")
        now = time.monotonic()
        if state == "copying" and copy_start is None:
            copy_start, prober.copying = now, True
        if state in ("ready", "pivoted", "done", "failed") and copy_end is None:
            copy_end, prober.copying = now, False
        if state in ("done", "failed"):
            break
        time.sleep(POLL_S)
    prober.copying = False
    end_bytes = int(move.get("end_bytes") or 0)
    copy_s = (copy_end - copy_start) if copy_start is not None and copy_end is not None else None
    return {"limit_mbps": how.get("limit_mbps"), "adaptive": bool(how.get("adaptive")), "to": to,
            "state": move.get("state"), "bytes": end_bytes, "copy_s": round(copy_s, 2) if copy_s else None,
            "total_s": round(time.monotonic() - t0, 2),
            "achieved_mbps": round(end_bytes / copy_s / 1e6, 1) if copy_s and end_bytes else None,
            "guest_latency_inflation_pct": inflation_pct(before, prober.during),
            **({"error": move["error"]} if move.get("error") else {})}


def _post(api: API, vid: str, body: str, settle_s: float = 60.0) -> None:
    """Request the move; right after the previous one the volume is reported by both hosts a while
    (not `held` yet): asked again until it is, at most `settle_s`."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            api("POST", f"/v1/volumes/{vid}/move", body)
            return
        except RuntimeError as e:
            if "not held" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def measure_moves(api: API, vid: str, hosts: tuple[str, str], get: Callable[[str], str]) -> list[dict[str, Any]]:
    """Each of MOVES in turn, back and forth between `hosts` (the volume starts on hosts[0])."""
    samples = [lat for _ in range(5) if (lat := probe_latency_ms(get)) is not None]
    if not samples:
        raise RuntimeError("the guest did not answer its latency probe")
    before = sorted(samples)[len(samples) // 2]
    out = []
    with Prober(get) as prober:
        for i, how in enumerate(MOVES):
            try:
                got = one_move(api, vid, hosts[(i + 1) % 2], how, prober, before)
            except RuntimeError as e:  # this one could not start: said, and the next are not tried
                out.append({**how, "to": hosts[(i + 1) % 2], "state": "refused", "error": str(e)})
                break
            out.append({**got, "guest_latency_before_ms": round(before, 3)})
    return out
