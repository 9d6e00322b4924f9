"""`softudc volume create NAME --size 10Gi [--host H] [--class remote] [--master]`: a standalone
volume (a gold master with --master: farms clone it with `from: NAME`);
`softudc volume snapshot VOL SNAP`: a consistent snapshot of a farm's or a standalone volume;
`softudc volume clone SRC[@SNAP] NEW`: a copy-on-write clone (constant time; clones of clones
make a branching tree). Through the manager (softudc/manager/volume_objects_api.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from softudc.cli.connect import Api, add_arguments, connect
from softudc.cli.errors import CliError, ok
from softudc.model.volume import parse_size_bytes


def size_text(n: int) -> str:
    """Bytes in the descriptor's units (10Gi) when whole, else the number."""
    for unit, shift in (("Ti", 40), ("Gi", 30), ("Mi", 20)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def create_body(a: argparse.Namespace) -> dict[str, Any]:
    size = parse_size_bytes(a.size)
    if size is None:
        raise CliError(f"--size {a.size!r}: a whole number of Mi, Gi or Ti from 1Mi to 64Ti (say 10Gi)")
    return {"name": a.name, "size_bytes": size, "master": a.master, **({"host": a.host} if a.host else {})}


def cmd_volume_create(a: argparse.Namespace) -> None:
    made = ok(*connect(a).call("POST", "/v1/volumes", json.dumps(create_body(a))))
    print(f"volume {a.name} ({'master, ' if a.master else ''}{a.size}) on {made['host']}")


def cmd_volume_snapshot(a: argparse.Namespace) -> None:
    made = ok(*connect(a).call("POST", f"/v1/volumes/{quote(a.volume, safe='')}/snapshots",
                               json.dumps({"snapshot": a.snapshot})))
    print(f"snapshot {a.volume}@{a.snapshot} on {made['host']} (chain depth {made['depth'] + 1}); "
          f"clone it with `softudc volume clone {a.volume}@{a.snapshot} NEW`")


def cmd_volume_clone(a: argparse.Namespace) -> None:
    made = ok(*connect(a).call("POST", "/v1/volumes", json.dumps({"name": a.new, "from": a.source})))
    note = " (at the soft depth limit: it is flattened in the background)" if made.get("flatten") else ""
    print(f"volume {a.new}: a clone of {a.source} on {made['host']}, chain depth {made['depth']}{note}")


def volume_rows(api: Api) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """`softudc get volumes`: every volume the manager knows (the farms', standalone ones, masters,
    snapshots), the table's columns and those of `-o wide`."""
    rows = [{**r, "size": size_text(r["size_bytes"])} for r in ok(*api.call("GET", "/v1/volumes"))]
    return rows, ["id", "class", "size", "from", "host", "state"], ["allowed", "depth", "snapshots", "reason"]


def add_ops_parsers(vsub: Any) -> None:
    c = vsub.add_parser("create", help="a standalone volume or gold master, placed in the pool")
    c.add_argument("name")
    c.add_argument("--size", required=True, help="10Gi, 512Mi, 1Ti")
    c.add_argument("--host", help="the storage host (default: the one with the most free room)")
    c.add_argument("--class", dest="cls", choices=["remote"], default="remote",
                   help="remote: served over NBD+TLS to the hosts that clone it (the only class here)")
    c.add_argument("--master", action="store_true", help="a gold master farms clone with `from: NAME`")
    add_arguments(c)
    c.set_defaults(fn=cmd_volume_create)
    s = vsub.add_parser("snapshot", help="a consistent snapshot of a volume (live, its export goes on)")
    s.add_argument("volume", help="a standalone volume or a farm's <farm>--<instance>--<volume>")
    s.add_argument("snapshot")
    add_arguments(s)
    s.set_defaults(fn=cmd_volume_snapshot)
    k = vsub.add_parser("clone", help="a copy-on-write clone of VOLUME@SNAPSHOT or of a master")
    k.add_argument("source", help="VOLUME@SNAPSHOT or a master's name")
    k.add_argument("new")
    add_arguments(k)
    k.set_defaults(fn=cmd_volume_clone)
