"""`softudc volume list [--farm F] [-o table|json]`: the farms' volumes as the manager plans them
(GET /v1/volumes): where each lives, who may open it, and why one could not be placed."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import ok

COLUMNS = ["id", "class", "size", "from", "keep", "host", "allowed", "state"]


def size_text(n: int) -> str:
    for unit, shift in (("Ti", 40), ("Gi", 30), ("Mi", 20)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def render(rows: list[dict[str, Any]], output: str) -> str:
    if output == "json":
        return json.dumps(rows, indent=2)
    table = [[c.upper() for c in COLUMNS]]
    for r in rows:
        table.append([r["id"], r["class"], size_text(r["size_bytes"]), r["from"], "yes" if r["keep"] else "no",
                      r["host"] or "-", ",".join(r["allowed"]) or "-", r["state"]])
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines += [f"{r['id']}: {r['reason']}" for r in rows if r["state"] == "unplaced"]
    return "\n".join(lines)


def cmd_volume_list(a: argparse.Namespace) -> None:
    path = "/v1/volumes" + (f"?farm={quote(a.farm)}" if a.farm else "")
    print(render(ok(*connect(a).call("GET", path)), a.output))


def add_volume_parser(sub: Any) -> None:
    v = sub.add_parser("volume", help="the farms' volumes (docs/volumes.md)")
    vsub = v.add_subparsers(dest="volume_command", required=True)
    ls = vsub.add_parser("list", help="where each farm volume lives and who may open it")
    ls.add_argument("--farm", help="only this farm")
    ls.add_argument("-o", "--output", choices=["table", "json"], default="table")
    add_arguments(ls)
    ls.set_defaults(fn=cmd_volume_list)
