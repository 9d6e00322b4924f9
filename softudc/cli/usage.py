"""`softudc usage [--farm F] [--since T] [-o table|json|csv]`: what each farm and VM used (GET /v1/usage).

T: an ISO date or time (2026-11-27, 2026-11-27T10:00, UTC unless it says), Unix seconds, or an age
(90m, 6h, 7d). The manager counts from the hour T falls in. Table and CSV: one row per VM, then one
per farm (VM "*"), network bytes summed over the VNETs (JSON: per VNET).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import CliError, ok

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COLUMNS = ["farm", "vm", "cpu_seconds", "memory_gib_hours", "volume_gib_hours", "rx_bytes", "tx_bytes"]


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds of `text` (see the module); ValueError saying what is accepted."""
    now = time.time() if now is None else now
    age = _AGE.match(text.strip())
    if age:
        return now - float(age.group(1)) * _UNIT[age.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an ISO date or time (2026-11-27T10:00), Unix seconds "
                         "or an age (90m, 6h, 7d)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def rows(body: dict[str, Any]) -> list[list[str]]:
    out = []
    for farm in body.get("farms", []):
        for item in [*farm["vms"], {**farm, "vm": "*"}]:
            net = item.get("network", [])
            out.append([farm["farm"], item["vm"], f"{item['cpu_seconds']:.1f}", f"{item['memory_gib_hours']:.4f}",
                        f"{item['volume_gib_hours']:.4f}", str(sum(n["rx_bytes"] for n in net)),
                        str(sum(n["tx_bytes"] for n in net))])
    return out


def render(body: dict[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(body, indent=2)
    if output == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([COLUMNS, *rows(body)])
        return buf.getvalue().rstrip("\n")
    table = [[c.upper() for c in COLUMNS], *rows(body)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def cmd_usage(a: argparse.Namespace) -> None:
    query = []
    if a.farm:
        query.append(f"farm={quote(a.farm)}")
    if a.since:
        try:
            query.append(f"since={parse_since(a.since):.0f}")
        except ValueError as e:
            raise CliError(str(e)) from None
    path = "/v1/usage" + ("?" + "&".join(query) if query else "")
    print(render(ok(*connect(a).call("GET", path)), a.output))


def add_usage_parser(sub: Any) -> None:
    u = sub.add_parser("usage", help="what each farm and VM used: CPU-seconds, memory GiB-hours, bytes per VNET")
    u.add_argument("--farm", help="only this farm")
    u.add_argument("--since", metavar="T", help="from T: ISO date/time (UTC), Unix seconds, or an age (6h, 7d)")
    u.add_argument("-o", "--output", choices=["table", "json", "csv"], default="table")
    add_arguments(u)
    u.set_defaults(fn=cmd_usage)
