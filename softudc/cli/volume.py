"""`softudc volume list [--farm F] [-o table|json]`: the farms' volumes as the manager plans them
(GET /v1/volumes): where each lives, who may open it, and why one could not be placed.
`softudc volume describe ID [-o text|json]`: one of them, with its export (GET /v1/volumes/ID).
`softudc volume delete ID`: refused while a farm wants it; the manager's answer says what to do."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from softudc.cli.connect import add_arguments, connect
from softudc.cli.errors import ok
from softudc.cli.volume_move import add_move_parser, move_text
from softudc.cli.volume_ops import add_ops_parsers
from softudc.cli.volume_ops import size_text as size_text  # here since volume_ops; the console reads it here

COLUMNS = ["id", "class", "size", "from", "keep", "host", "allowed", "state"]


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


DESCRIBED = [("id", "id"), ("farm", "farm"), ("instance", "instance"), ("volume", "volume"), ("class", "class"),
             ("from", "from"), ("keep", "keep"), ("encrypted", "encrypted"), ("iops limit", "iops"),
             ("MB/s limit", "mbps"), ("storage host", "host"), ("VM's host", "vm_host"),
             ("allowed", "allowed"), ("state", "state")]


def describe_text(row: dict[str, Any]) -> str:
    lines = [f"{label + ':':<14}{_value(row.get(key))}" for label, key in DESCRIBED]
    lines.insert(5, f"{'size:':<14}{size_text(row['size_bytes'])}")
    export = row.get("export")
    lines.append(f"{'export:':<14}" + (f"nbds://{export['address']}:{export['port']}/{row['id']} "
                                       f"(admits {', '.join(export.get('allowed', [])) or 'nobody'})"
                                       if export else "-"))
    if row.get("reason"):
        lines.append(f"{'reason:':<14}{row['reason']}")
    for r in row.get("replicas") or []:  # a mirrored volume's (softudc/manager/volume_replicas.py)
        lines.append(f"{'replica:':<14}{r['name']} on {r['host']}: {r['state']}")
    if "progress" in row:
        lines.append(f"{'rebuilt:':<14}{row['progress']:.0%}")
    if "move" in row:  # its latest move (softudc/cli/volume_move.py)
        lines.append(f"{'move:':<14}{move_text(row['move'])}")
    return "\n".join(lines)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(v) or "-"
    return "-" if v in (None, "") else str(v)


def cmd_volume_describe(a: argparse.Namespace) -> None:
    row = ok(*connect(a).call("GET", f"/v1/volumes/{quote(a.id, safe='')}"))
    print(json.dumps(row, indent=2) if a.output == "json" else describe_text(row))


def cmd_volume_delete(a: argparse.Namespace) -> None:
    ok(*connect(a).call("DELETE", f"/v1/volumes/{quote(a.id, safe='')}"))
    print(f"volume {a.id} deleted")


def add_volume_parser(sub: Any) -> None:
    v = sub.add_parser("volume", help="the farms' volumes (docs/volumes.md)")
    vsub = v.add_subparsers(dest="volume_command", required=True)
    ls = vsub.add_parser("list", help="where each farm volume lives and who may open it")
    ls.add_argument("--farm", help="only this farm")
    ls.add_argument("-o", "--output", choices=["table", "json"], default="table")
    add_arguments(ls)
    ls.set_defaults(fn=cmd_volume_list)
    d = vsub.add_parser("describe", help="one volume: where it is, its export, who may open it")
    d.add_argument("id", help="<farm>--<instance>--<volume> (softudc volume list)")
    d.add_argument("-o", "--output", choices=["text", "json"], default="text")
    add_arguments(d)
    d.set_defaults(fn=cmd_volume_describe)
    rm = vsub.add_parser("delete", help="delete a volume (a farm's: edit or delete the farm instead)")
    rm.add_argument("id", help="<farm>--<instance>--<volume>")
    add_arguments(rm)
    rm.set_defaults(fn=cmd_volume_delete)
    add_move_parser(vsub)  # `volume move` (softudc/cli/volume_move.py)
    add_ops_parsers(vsub)  # `volume create|snapshot|clone` (softudc/cli/volume_ops.py)
