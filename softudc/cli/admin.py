"""`softudc apply|diff|get|describe|delete|host` against a manager (kubectl-style): a lab's
(`--lab NAME`) or any by URL (see `softudc.cli.connect`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from softudc.cli.connect import Api, add_arguments, connect
from softudc.cli.errors import CliError, ok
from softudc.model.farm import Farm, validate
from softudc.model.hoststate import SEPARATOR, split_vm_name
from softudc.model.source import DescriptorError
from softudc.placement.model import fmt_mib


def _read_farm(path: str) -> tuple[str, Farm]:
    """The descriptor's text and its Farm; every problem printed, then an error, if invalid."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CliError(f"{path}: {e.strerror}") from None
    try:
        return text, validate(text, path)
    except DescriptorError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        raise CliError(f"{path}: {len(e.problems)} problem(s); nothing was changed") from None


def cmd_apply(a: argparse.Namespace) -> None:
    text, farm = _read_farm(a.file)
    api = connect(a)
    if a.dry_run:
        _show_plan(ok(*api.call("POST", f"/v1/farms/{farm.name}/plan", text)), farm.name)
        return
    body = ok(*api.call("PUT", f"/v1/farms/{farm.name}", text))
    print(f"farm {farm.name} applied (revision {body['revision']})")
    if not a.wait:
        return
    t0 = time.monotonic()
    while True:
        f = ok(*api.call("GET", f"/v1/farms/{farm.name}"))
        status = f["status"]
        instances = status.get("instances", [])
        up = sum(1 for i in instances if i.get("state") == "running")
        errors = [f"{i['name']}: {i['error']}" for i in instances if i.get("error")]
        print(f"\r  {up}/{len(instances)} VMs running  {time.monotonic() - t0:4.0f} s" +
              (f"  ({errors[0]})" if errors else ""), end="", file=sys.stderr, flush=True)
        if status.get("conditions", {}).get("Ready") or status.get("unplaced"):
            break
        if time.monotonic() - t0 > a.timeout:
            print(file=sys.stderr)
            _print_farm(f)
            raise CliError(f"farm {farm.name} is not Ready after {a.timeout:.0f} s; it stays applied and the "
                           f"manager keeps at it (`softudc describe farm {farm.name}` shows why)")
        time.sleep(1)
    print(file=sys.stderr)
    _print_farm(f)
    if status.get("unplaced"):
        raise CliError(f"{len(status['unplaced'])} instance(s) of {farm.name} cannot be placed (reasons above); "
                       "add hosts or capacity, or lower the replicas")


def _show_plan(plan: dict[str, Any], name: str) -> None:
    print(f"farm {name}: {plan['summary']}")
    for i in plan["create"]:
        print(f"  + {i['name']:14} on {i['host']:5} " + " ".join(f"{v}:{a}" for v, a in sorted(i["addresses"].items())))
    for i in plan["delete"]:
        print(f"  - {i['name']:14} on {i['host']}")
    for i in plan.get("resize", []):
        print(f"  ~ {i['name']:14} on {i['host']:5} {i['change']}")
    for n, why in plan["unplaced"].items():
        print(f"  ! {n} cannot be placed: " + "; ".join(why))
    if not plan["changes"]:
        print("  no changes")


def cmd_diff(a: argparse.Namespace) -> None:
    """Exit 0: applying the file would change nothing; 1: it would (like `kubectl diff`)."""
    text, farm = _read_farm(a.file)
    plan = ok(*connect(a).call("POST", f"/v1/farms/{farm.name}/plan", text))
    _show_plan(plan, farm.name)
    sys.exit(1 if plan["changes"] else 0)


def _print_farm(f: dict[str, Any]) -> None:
    st = f["status"]
    print(f"farm {f['name']}  revision {f['revision']}  " +
          "  ".join(f"{k}={v}" for k, v in sorted(st.get("conditions", {}).items())))
    print("  VNETs: " + ", ".join(f"{n}={i}" for n, i in sorted(st.get("vnet_ids", {}).items())))
    if st.get("problem"):  # the farm could not be planned: what it runs stays as it was
        print(f"  problem: {st['problem']}")
    for error in st.get("vnet_errors", []):
        print(f"  VNET error: {error}")
    for i in st.get("instances", []):
        addrs = " ".join(f"{v}:{a}" for v, a in sorted(i["addresses"].items()))
        moving = i.get("migrating")
        state = f"moving to {moving['to']} ({moving.get('state', '?')})" if moving else i.get("state", "?")
        print(f"  {i['name']:14} {i['host']:5} {state:9} {addrs}")
        if i.get("error"):
            print(f"  {'':14} error: {i['error']}")
        if i.get("change"):
            print(f"  {'':14} pending: {i['change']}")
    for name, why in st.get("unplaced", {}).items():
        print(f"  {name}: cannot be placed: " + "; ".join(why))
    if any(i.get("change") for i in st.get("instances", [])):
        print(f"  (a running VM takes a new size once stopped: `softudc vm stop {f['name']}/INSTANCE`; "
              "the manager starts it again)")


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """kubectl-style: upper-case headers, aligned columns, '-' for nothing."""
    cells = [[c.upper() for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(v: Any) -> str:
    if v is None or v == [] or v == {}:
        return "-"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    if isinstance(v, dict):
        return ",".join(f"{k}:{x}" for k, x in v.items())
    return str(v)


def _farms(api: Api) -> list[dict[str, Any]]:
    return [ok(*api.call("GET", f"/v1/farms/{f['name']}")) for f in ok(*api.call("GET", "/v1/farms"))]


def get_rows(api: Api, what: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The rows of `softudc get WHAT`, the table's columns and the extra columns of `-o wide`."""
    if what == "hosts":
        hosts = ok(*api.call("GET", "/v1/hosts"))
        rows = [{"name": h["name"], "state": h.get("state", "joined"), "vms": len(h.get("running", [])),
                 "vcpus": f"{h.get('used_vcpus', 0)}/{h.get('vcpus', '?')}",
                 "memory": f"{fmt_mib(h.get('used_memory_mib', 0))}/{fmt_mib(h.get('memory_mib', 0))}",
                 "reported": _ago(h.get("reported")), "running": h.get("running", []),
                 "migration_uri": h.get("migration_uri"), "errors": h.get("errors", []),
                 "notes": h.get("notes", [])} for h in hosts]
        return rows, ["name", "state", "vms", "vcpus", "memory", "reported"], ["migration_uri", "running", "errors",
                                                                                "notes"]
    farms = _farms(api)
    if what == "farms":
        rows = [{"name": f["name"], "revision": f["revision"], "vms": len(f["status"].get("instances", [])),
                 **{k.lower(): v for k, v in f["status"].get("conditions", {}).items()},
                 "vnets": f["status"].get("vnet_ids", {}), "unplaced": list(f["status"].get("unplaced", {}))}
                for f in farms]
        return rows, ["name", "revision", "vms", "ready"], ["placed", "degraded", "vnets", "unplaced"]
    rows = []
    for f in farms:
        spec = validate(f["spec"]["descriptor"], f"farms/{f['name']}")
        if what == "vnets":
            spans: dict[str, set[str]] = {}
            vm_vnets = {v.name: {n.vnet for n in v.nics} for v in spec.vms}
            for i in f["status"].get("instances", []):
                for vnet in vm_vnets.get(i["vm"], ()):
                    spans.setdefault(vnet, set()).add(i["host"])
            rows += [{"farm": f["name"], "name": v.name, "id": f["status"].get("vnet_ids", {}).get(v.name),
                      "subnet": str(v.subnet), "security": v.security, "hosts": sorted(spans.get(v.name, ())),
                      "mtu": v.mtu} for v in spec.vnets]
            continue
        sizes = {v.name: v for v in spec.vms}
        for i in f["status"].get("instances", []):
            moving = i.get("migrating")
            state = i.get("state", "?")
            if moving:
                state = f"moving->{moving['to']}"
            vm = sizes.get(i["vm"])
            rows.append({"farm": f["name"], "name": i["name"], "host": i["host"], "state": state,
                         "addresses": i.get("addresses", {}), "vcpus": vm.vcpus if vm else None,
                         "memory": fmt_mib(vm.memory_mib) if vm else None,
                         "migration": vm.migration if vm else None, "error": i.get("error"),
                         "pending": i.get("change")})
    if what == "vnets":
        return rows, ["farm", "name", "id", "subnet", "security"], ["mtu", "hosts"]
    return rows, ["farm", "name", "host", "state", "addresses"], ["vcpus", "memory", "migration", "error", "pending"]


def _ago(t: Any) -> str:
    return f"{time.time() - float(t):.0f}s ago" if isinstance(t, int | float) else "never"


def cmd_get(a: argparse.Namespace) -> None:
    from softudc.cli.rebalance import plan_rows  # softudc get plans (softudc/cli/rebalance.py)
    from softudc.cli.volume_ops import volume_rows  # softudc get volumes (softudc/cli/volume_ops.py)

    own = {"plans": plan_rows, "volumes": volume_rows}.get(a.what)
    rows, columns, wide = own(connect(a)) if own is not None else get_rows(connect(a), a.what)
    if a.output == "json":
        print(json.dumps(rows, indent=2))
    elif a.output == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False, default_flow_style=False), end="")
    elif not rows:
        print(f"no {a.what}", file=sys.stderr)
    else:
        print_table(rows, columns + (wide if a.output == "wide" else []))


def managed_instance(api: Api, name: str) -> tuple[str, str] | None:
    """`farm/instance`, `farm--instance` (its name on the host) or a bare instance name that one
    farm has: (farm, instance); None when no farm of the manager has it."""
    for sep in ("/", SEPARATOR):  # SEPARATOR: its name on the host
        if sep in name:
            farm, instance = name.split(sep, 1)
            return farm, instance
    owners = [f["name"] for f in _farms(api) if any(i["name"] == name for i in f["status"].get("instances", []))]
    if len(owners) > 1:
        raise CliError(f"farms {', '.join(owners)} each have an instance {name}; say which: FARM/{name}")
    return (owners[0], name) if owners else None


def migrate_managed(api: Api, farm: str, instance: str, to: str, timeout: float) -> None:
    """`softudc vm migrate` when a manager runs: ask it, then follow the farm's status."""
    body = ok(*api.call("POST", f"/v1/farms/{farm}/instances/{instance}/migrate", json.dumps({"to": to})))
    src, kind = body["instance"]["host"], "cold" if body["instance"]["migrating"].get("cold") else "live"
    t0 = time.monotonic()
    while True:
        f = ok(*api.call("GET", f"/v1/farms/{farm}"))
        inst = next((i for i in f["status"].get("instances", []) if i["name"] == instance), None)
        if inst is None:
            raise CliError(f"{farm}/{instance} was removed from its farm while it moved")
        moving = inst.get("migrating")
        if not moving:
            break
        total, done = moving.get("data_total") or 0, moving.get("data_processed") or 0
        pct = f"{100 * done / total:5.1f}%" if total else "  ...  "
        print(f"\r  {farm}/{instance}: {src} -> {to} ({kind})  {moving.get('state', '?'):9} {pct} "
              f"{done / 2**20:7.1f} MiB  {time.monotonic() - t0:5.1f} s", end="", file=sys.stderr, flush=True)
        if time.monotonic() - t0 > timeout:
            print(file=sys.stderr)
            raise CliError(f"{farm}/{instance} is still moving after {timeout:.0f} s; follow it with "
                           f"`softudc describe farm {farm} {api.hint}`")
        time.sleep(0.5)
    print(file=sys.stderr)
    outcome = next((e for e in reversed(f.get("events", [])) if e["type"] in ("Migrated", "MigrationFailed")
                    and e["message"].startswith(f"{instance}:")), None)
    message = outcome["message"] if outcome else "(no event recorded)"
    if inst["host"] != to:
        raise CliError(f"migration failed: {message}")
    print(f"{farm}/{instance} now runs on {to}: {message}")


def cmd_events(a: argparse.Namespace) -> None:
    query = "&".join(f"{k}={v}" for k, v in (("kind", a.kind), ("name", a.name), ("limit", a.limit)) if v)
    events = ok(*connect(a).call("GET", "/v1/events" + (f"?{query}" if query else "")))
    if a.output == "json":
        print(json.dumps(events, indent=2))
        return
    for e in events:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['time']))}  {e['kind']}/{e['name']:10} "
              f"{e['type']:15} {e['message']}")


def cmd_host_state(a: argparse.Namespace) -> None:
    body = ok(*connect(a).call("PUT", f"/v1/hosts/{a.name}/state", json.dumps({"state": a.state})))
    print(f"{body['host']}: {body['state']}" + ("" if a.state == "ready" else
                                                  ": new VMs go elsewhere; those there stay"))


def cmd_host_rm(a: argparse.Namespace) -> None:
    body = ok(*connect(a).call("DELETE", f"/v1/hosts/{a.name}" + ("?force=true" if a.force else "")))
    print(f"{body['host']}: removed; its certificate is refused from now on (join it again with a new token)")
    if body.get("instances"):
        print(f"  still assigned to it: {', '.join(body['instances'])}", file=sys.stderr)


def cmd_describe(a: argparse.Namespace) -> None:
    f = ok(*connect(a).call("GET", f"/v1/farms/{a.name}"))
    _print_farm(f)
    for e in f.get("events", []):
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e['time']))} {e['type']:8} {e['message']}")


def cmd_delete(a: argparse.Namespace) -> None:
    api = connect(a)
    ok(*api.call("DELETE", f"/v1/farms/{a.name}"))
    print(f"farm {a.name} deleted")
    if a.wait:
        deadline = time.monotonic() + a.timeout
        while True:  # the hosts' own reports: what still runs there
            left = [vm for h in ok(*api.call("GET", "/v1/hosts")) for vm in h.get("running", [])
                    if (split_vm_name(vm) or ("", ""))[0] == a.name]
            if not left:
                print("  no VM of it runs on any host")
                return
            if time.monotonic() > deadline:
                raise CliError(f"VMs of {a.name} still run after {a.timeout:.0f} s: {', '.join(left)} "
                               "(see `softudc host list -o wide` for the hosts' errors)")
            print(f"\r  {len(left)} VM(s) still running", end="", file=sys.stderr, flush=True)
            time.sleep(1)


def add_parsers(sub: Any) -> None:
    ap = sub.add_parser("apply", help="apply a farm descriptor through the manager")
    ap.add_argument("-f", "--file", required=True)
    add_arguments(ap)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--no-wait", dest="wait", action="store_false")
    ap.add_argument("--timeout", type=float, default=180)
    ap.set_defaults(fn=cmd_apply)
    df = sub.add_parser("diff", help="what applying a farm descriptor would change (exit 1 if anything)")
    df.add_argument("-f", "--file", required=True)
    add_arguments(df)
    df.set_defaults(fn=cmd_diff)
    g = sub.add_parser("get", help="farms, vms, hosts, vnets, rebalance plans or volumes known to the manager")
    g.add_argument("what", choices=["farms", "vms", "hosts", "vnets", "plans", "volumes"])
    add_arguments(g)
    g.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")
    g.set_defaults(fn=cmd_get)
    hl = sub.add_parser("host", help="hosts of the manager").add_subparsers(dest="sub", required=True)
    ls = hl.add_parser("list", help="hosts: state, capacity and what the farms use of it")
    add_arguments(ls)
    ls.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")
    ls.set_defaults(fn=cmd_get, what="hosts")
    hs = hl.add_parser("state", help="take a host out of placement (draining, maintenance) or back in (ready)")
    hs.add_argument("name")
    hs.add_argument("state", choices=["ready", "draining", "maintenance"])
    add_arguments(hs)
    hs.set_defaults(fn=cmd_host_state)
    hr = hl.add_parser("rm", help="remove a host: its certificate is refused from then on")
    hr.add_argument("name")
    hr.add_argument("--force", action="store_true", help="even while instances are placed there")
    add_arguments(hr)
    hr.set_defaults(fn=cmd_host_rm)
    from softudc.cli.manager import add_join_token_parser

    add_join_token_parser(hl)
    from softudc.cli.power import add_power_parsers

    add_power_parsers(hl)
    from softudc.cli.drain import add_drain_parsers

    add_drain_parsers(hl)  # softudc host drain|undrain (softudc/cli/drain.py)
    from softudc.cli.upgrade import add_upgrade_parsers

    add_upgrade_parsers(hl)  # softudc host upgrade|upgrade-status (softudc/cli/upgrade.py)
    ev = sub.add_parser("events", help="the manager's event log (applies, plans, migrations, host states)")
    ev.add_argument("--kind", choices=["farm", "host"])
    ev.add_argument("--name")
    ev.add_argument("--limit", type=int, default=100)
    ev.add_argument("-o", "--output", choices=["table", "json"], default="table")
    add_arguments(ev)
    ev.set_defaults(fn=cmd_events)
    d = sub.add_parser("describe", help="a farm: status, instances, events")
    d.add_argument("kind", choices=["farm"])
    d.add_argument("name")
    add_arguments(d)
    d.set_defaults(fn=cmd_describe)
    rm = sub.add_parser("delete", help="delete a farm")
    rm.add_argument("kind", choices=["farm"])
    rm.add_argument("name")
    add_arguments(rm)
    rm.add_argument("--wait", action="store_true")
    rm.add_argument("--timeout", type=float, default=120)
    rm.set_defaults(fn=cmd_delete)
    from softudc.cli.top import add_top_parser

    add_top_parser(sub)  # softudc top hosts|vms (softudc/cli/top.py)
    from softudc.cli.rebalance import add_rebalance_parser

    add_rebalance_parser(sub)  # softudc rebalance [--dry-run|--plan ID|--auto S] (softudc/cli/rebalance.py)
    from softudc.cli.usage import add_usage_parser

    add_usage_parser(sub)  # softudc usage (softudc/cli/usage.py)
    from softudc.cli.volume import add_volume_parser

    add_volume_parser(sub)  # softudc volume list (softudc/cli/volume.py)
