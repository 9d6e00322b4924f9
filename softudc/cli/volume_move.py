"""`softudc volume move ID --to HOST [--limit-mbps N | --adaptive [--max-latency-inflation PCT]]
[--no-wait] [--timeout S]`: move a remote volume to another storage host while its VM runs
(POST /v1/volumes/ID/move), then follow it (GET /v1/volumes/ID/move) with a progress line until
it is done (the VM's disk switched over to the destination) or failed."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import CliError, ok
from softudc.cli.follow import follow_progress

OVER = ("done", "failed")


def line(m: dict[str, Any]) -> str:
    """One move as a line: state, bytes copied of the total, rate, limit, latency inflation."""
    cur, end = m.get("cur_bytes", 0), m.get("end_bytes", 0)
    parts = [f"{m['volume']}: {m['from']} -> {m['to']} {m['state']}"]
    if end:
        parts.append(f"{cur / 1e6:.1f}/{end / 1e6:.1f} MB ({100 * cur / end:.0f} %)")
    if m.get("rate_bps") is not None:
        parts.append(f"{m['rate_bps'] / 1e6:.1f} MB/s")
    limit = "adaptive" if m.get("adaptive") else f"limit {m['limit_mbps']} MB/s" if m.get("limit_mbps") else ""
    if m.get("speed_bps") is not None and m.get("adaptive"):
        limit += f" (now {m['speed_bps'] / 1e6:.0f} MB/s)"
    if limit:
        parts.append(limit)
    if m.get("latency_inflation_pct") is not None:
        parts.append(f"guest latency {m['latency_inflation_pct']:+.0f} %")
    if m.get("error"):
        parts.append(f"error: {m['error']}")
    return ", ".join(parts)


def follow(a: argparse.Namespace, first: dict[str, Any], clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the move until done or failed; a CliError after a.timeout (the move goes on)."""
    api = connect(a)
    return follow_progress(first, lambda: ok(*api.call("GET", f"/v1/volumes/{quote(a.id, safe='')}/move")),
                           lambda m: m["state"] not in OVER, line, a.timeout,
                           lambda m: f" (the move goes on: `softudc volume describe {a.id}` shows it)", clock, sleep)


def cmd_volume_move(a: argparse.Namespace) -> None:
    body: dict[str, Any] = {"to": a.to}
    if a.limit_mbps is not None:
        body["limit_mbps"] = a.limit_mbps
    if a.adaptive:
        body.update(adaptive=True, max_latency_inflation_pct=a.max_latency_inflation)
    m = ok(*connect(a).call("POST", f"/v1/volumes/{quote(a.id, safe='')}/move", json.dumps(body)))
    if a.wait:
        m = follow(a, m)
    print(line(m))
    if m["state"] == "failed":
        raise CliError(f"the move of {a.id} failed: {m.get('error') or 'see the VM host gatekeeper log'}; "
                       "the volume stays where it was (run the move again to retry)")


def move_text(m: dict[str, Any] | None) -> str:
    """`softudc volume describe`'s move line."""
    return line(m) if m else "-"


def add_move_parser(vsub: Any) -> None:
    mv = vsub.add_parser("move", help="move a remote volume to another storage host while its VM runs")
    mv.add_argument("id", help="<farm>--<instance>--<volume> (softudc volume list)")
    mv.add_argument("--to", required=True, help="the destination storage host")
    how = mv.add_mutually_exclusive_group()
    how.add_argument("--limit-mbps", type=int, help="copy at most this many MB/s")
    how.add_argument("--adaptive", action="store_true", help="as fast as the guest's disk latency allows")
    mv.add_argument("--max-latency-inflation", type=int, default=50, metavar="PCT",
                    help="adaptive: how much the guest's disk latency may grow over before the copy (default 50)")
    mv.add_argument("--no-wait", dest="wait", action="store_false", help="return once the move is recorded")
    mv.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow it (default 3600)")
    add_arguments(mv)
    mv.set_defaults(fn=cmd_volume_move)
