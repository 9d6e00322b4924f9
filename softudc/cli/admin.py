"""`softudc apply|get|describe|delete` against a lab's manager (kubectl-style)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from softudc.lab import LabError, load_lab
from softudc.lab.manager import call
from softudc.model.farm import Farm, validate
from softudc.model.source import DescriptorError


def _lab(a: argparse.Namespace) -> Any:
    lab = load_lab(a.lab, a.state_dir)
    if not lab.manager_pid:
        raise LabError(f"lab {a.lab} has no manager (start it with `softudc lab up {a.lab} --vms --manager`)")
    return lab


def _ok(status: int, body: Any) -> Any:
    if status != 200:
        message = body.get("error", body) if isinstance(body, dict) else body
        for p in body.get("problems", []) if isinstance(body, dict) else []:
            print(p, file=sys.stderr)
        raise LabError(f"manager: {message}")
    return body


def _read_farm(path: str) -> tuple[str, Farm]:
    """The descriptor's text and its Farm; every problem printed, then an error, if invalid."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LabError(f"{path}: {e.strerror}") from None
    try:
        return text, validate(text, path)
    except DescriptorError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        raise LabError(f"{path}: {len(e.problems)} problem(s); nothing was changed") from None


def cmd_apply(a: argparse.Namespace) -> None:
    text, farm = _read_farm(a.file)
    lab = _lab(a)
    if a.dry_run:
        _show_plan(_ok(*call(lab, "POST", f"/v1/farms/{farm.name}/plan", text)), farm.name)
        return
    body = _ok(*call(lab, "PUT", f"/v1/farms/{farm.name}", text))
    print(f"farm {farm.name} applied (revision {body['revision']})")
    deadline = time.monotonic() + a.timeout
    while a.wait and time.monotonic() < deadline:
        status = _ok(*call(lab, "GET", f"/v1/farms/{farm.name}"))["status"]
        cond = status.get("conditions", {})
        ready = sum(1 for _ in status.get("instances", []))
        print(f"\r  placed {cond.get('Placed')}, ready {cond.get('Ready')}, {ready} instance(s)", end="",
              file=sys.stderr, flush=True)
        if cond.get("Ready") or status.get("unplaced"):
            break
        time.sleep(1)
    print(file=sys.stderr)
    _print_farm(_ok(*call(lab, "GET", f"/v1/farms/{farm.name}")))


def _show_plan(plan: dict[str, Any], name: str) -> None:
    print(f"farm {name}: {plan['summary']}")
    for i in plan["create"]:
        print(f"  + {i['name']:14} on {i['host']:5} " + " ".join(f"{v}:{a}" for v, a in sorted(i["addresses"].items())))
    for i in plan["delete"]:
        print(f"  - {i['name']:14} on {i['host']}")
    for n, why in plan["unplaced"].items():
        print(f"  ! {n} cannot be placed: " + "; ".join(why))
    if not plan["changes"]:
        print("  no changes")


def cmd_diff(a: argparse.Namespace) -> None:
    """Exit 0: applying the file would change nothing; 1: it would (like `kubectl diff`)."""
    text, farm = _read_farm(a.file)
    plan = _ok(*call(_lab(a), "POST", f"/v1/farms/{farm.name}/plan", text))
    _show_plan(plan, farm.name)
    sys.exit(1 if plan["changes"] else 0)


def _print_farm(f: dict[str, Any]) -> None:
    st = f["status"]
    print(f"farm {f['name']}  revision {f['revision']}  " +
          "  ".join(f"{k}={v}" for k, v in sorted(st.get("conditions", {}).items())))
    print("  VNETs: " + ", ".join(f"{n}={i}" for n, i in sorted(st.get("vnet_ids", {}).items())))
    for i in st.get("instances", []):
        addrs = " ".join(f"{v}:{a}" for v, a in sorted(i["addresses"].items()))
        print(f"  {i['name']:14} {i['host']:5} {addrs}")
    for name, why in st.get("unplaced", {}).items():
        print(f"  {name}: cannot be placed: " + "; ".join(why))


def cmd_get(a: argparse.Namespace) -> None:
    lab = _lab(a)
    if a.what == "farms":
        rows = _ok(*call(lab, "GET", "/v1/farms"))
    elif a.what == "hosts":
        rows = [{k: h.get(k) for k in ("name", "state", "vcpus", "memory_mib", "running")}
                for h in _ok(*call(lab, "GET", "/v1/hosts"))]
    else:
        rows = []
        for f in _ok(*call(lab, "GET", "/v1/farms")):
            full = _ok(*call(lab, "GET", f"/v1/farms/{f['name']}"))
            rows += [{"farm": f["name"], **i} for i in full["status"].get("instances", [])]
    if a.output == "json":
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items()))


def cmd_describe(a: argparse.Namespace) -> None:
    f = _ok(*call(_lab(a), "GET", f"/v1/farms/{a.name}"))
    _print_farm(f)
    for e in f.get("events", []):
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e['time']))} {e['type']:8} {e['message']}")


def cmd_delete(a: argparse.Namespace) -> None:
    lab = _lab(a)
    _ok(*call(lab, "DELETE", f"/v1/farms/{a.name}"))
    print(f"farm {a.name} deleted")
    if a.wait:
        from gatekeeper.client import GatekeeperClient

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = [vm["name"] for h in lab.hosts for vm in GatekeeperClient(h.api_socket).call("vm.list")
                    if vm["name"].startswith(f"{a.name}--")]
            if not left:
                print("  no VM of it is left on any host")
                return
            time.sleep(1)
        raise LabError(f"VMs of {a.name} still present after 120 s: {', '.join(left)}")


def add_parsers(sub: Any) -> None:
    ap = sub.add_parser("apply", help="apply a farm descriptor through the lab's manager")
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("--lab", required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--no-wait", dest="wait", action="store_false")
    ap.add_argument("--timeout", type=float, default=180)
    ap.set_defaults(fn=cmd_apply)
    df = sub.add_parser("diff", help="what applying a farm descriptor would change (exit 1 if anything)")
    df.add_argument("-f", "--file", required=True)
    df.add_argument("--lab", required=True)
    df.set_defaults(fn=cmd_diff)
    g = sub.add_parser("get", help="farms, vms or hosts known to the lab's manager")
    g.add_argument("what", choices=["farms", "vms", "hosts"])
    g.add_argument("--lab", required=True)
    g.add_argument("-o", "--output", choices=["table", "json"], default="table")
    g.set_defaults(fn=cmd_get)
    d = sub.add_parser("describe", help="a farm: status, instances, events")
    d.add_argument("kind", choices=["farm"])
    d.add_argument("name")
    d.add_argument("--lab", required=True)
    d.set_defaults(fn=cmd_describe)
    rm = sub.add_parser("delete", help="delete a farm")
    rm.add_argument("kind", choices=["farm"])
    rm.add_argument("name")
    rm.add_argument("--lab", required=True)
    rm.add_argument("--wait", action="store_true")
    rm.set_defaults(fn=cmd_delete)
