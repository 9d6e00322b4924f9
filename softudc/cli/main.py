"""The `softudc` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from softudc.cli.errors import CliError
from softudc.lab import LabError, LabSpec, lab_down, lab_status, lab_up, load_lab
from softudc.lab.endpoint import add_endpoint, move_endpoint, remove_endpoint
from softudc.lab.manager import MANAGER_PORT
from softudc.lab.shell import CommandError
from softudc.localapi import LocalApiClient, LocalApiError


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    elif isinstance(obj, list):
        for row in obj:
            print("  ".join(f"{k}={v}" for k, v in row.items()) if isinstance(row, dict) else row)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            print(f"{k}: {json.dumps(v, default=str) if isinstance(v, list | dict) else v}")
    else:
        print(obj)


def cmd_lab_up(a: argparse.Namespace) -> None:
    spec = LabSpec(a.name, hosts=a.hosts, segments=a.segments, underlay_mtu=a.mtu, gatekeepers=not a.no_gatekeepers,
                   transport=a.transport, flood=a.flood, offloads=not a.no_offloads, vnetd=a.vnetd,
                   vnetd_peering=a.vnetd_peering, vms=a.vms, manager=a.manager, ha=a.ha,
                   power=a.power)
    print(f"lab {a.name}: starting", file=sys.stderr)
    lab = lab_up(spec, a.state_dir, progress=True)
    for h in lab.hosts:
        print(f"{h.name}  netns={h.netns}  underlay={h.underlay_ip}  mgmt={h.mgmt_ip}  api={h.api_socket}")


def cmd_lab_down(a: argparse.Namespace) -> None:
    removed = lab_down(a.name, a.state_dir)
    print(f"lab {a.name}: removed {len(removed)} namespace(s)")


def cmd_lab_prometheus(a: argparse.Namespace) -> None:
    from softudc.lab.prometheus import write_config

    lab = load_lab(a.name, a.state_dir)
    config = write_config(lab)
    print(f"lab {a.name}: Prometheus configuration in {config} (targets: {config.parent / 'targets'})")
    print("run it on the management network (the targets listen there):")
    print(f"  ip netns exec {lab.mgmt_ns} prometheus --config.file={config} "
          f"--storage.tsdb.path={config.parent / 'data'} --web.listen-address=127.0.0.1:9090")


def cmd_lab_status(a: argparse.Namespace) -> None:
    status = lab_status(a.name, a.state_dir)
    if a.json:
        _print(status, True)
        return
    for h in status["hosts"]:  # type: ignore[attr-defined]
        alive = "up" if h["gatekeeper_alive"] else "DOWN"
        print(f"{h['host']}  segment={h['segment']}  underlay={h['underlay']}  gatekeeper={alive}")
    for e in status["endpoints"]:  # type: ignore[attr-defined]
        print(f"endpoint {e['name']}  host={e['host']}  vnet={e['vnet']}  ip={e['ip']}  mac={e['mac']}")
    for m in status.get("managers", []):  # type: ignore[attr-defined]
        up = "up" if m["alive"] else "DOWN"
        print(f"manager {m['id']}  https://{m['address']}:{MANAGER_PORT}  pid={m['pid']}  {up}")
    for e in status.get("etcd", []):  # type: ignore[attr-defined]
        up = "up" if e["alive"] else "DOWN"
        print(f"etcd {e['name']}  http://{e['host']}:{e['client_port']}  pid={e['pid']}  {up}")


def cmd_endpoint_add(a: argparse.Namespace) -> None:
    ep = add_endpoint(load_lab(a.lab, a.state_dir), a.name, a.host, a.vnet, a.ip, a.mac)
    print(f"endpoint {ep.name}: netns={ep.netns} host={ep.host} vnet={ep.vnet} ip={ep.ip} mac={ep.mac}")


def cmd_endpoint_move(a: argparse.Namespace) -> None:
    ep = move_endpoint(load_lab(a.lab, a.state_dir), a.name, a.to)
    print(f"endpoint {ep.name}: now on {ep.host}")


def cmd_endpoint_rm(a: argparse.Namespace) -> None:
    remove_endpoint(load_lab(a.lab, a.state_dir), a.name)
    print(f"endpoint {a.name}: removed")


def _clients(a: argparse.Namespace) -> list[tuple[str, LocalApiClient]]:
    lab = load_lab(a.lab, a.state_dir)
    hosts = lab.hosts if a.host == "all" else [lab.host(a.host)]
    return [(h.name, LocalApiClient(h.api_socket)) for h in hosts]


def _each_host(a: argparse.Namespace, op: str, **kwargs: Any) -> None:
    out = {name: client.call(op, **kwargs) for name, client in _clients(a)}
    _print(out if a.json or len(out) > 1 else next(iter(out.values())), a.json)


def cmd_vnet_create(a: argparse.Namespace) -> None:
    _each_host(a, "vnet.create", vnet=a.vnet, **({"transport": a.transport} if a.transport else {}))


def cmd_vnet_delete(a: argparse.Namespace) -> None:
    _each_host(a, "vnet.delete", vnet=a.vnet)


def cmd_vnet_list(a: argparse.Namespace) -> None:
    _each_host(a, "vnet.list")


def cmd_varp_cache(a: argparse.Namespace) -> None:
    _each_host(a, "varp.cache")


def cmd_counters(a: argparse.Namespace) -> None:
    _each_host(a, "counters")


def cmd_vnetd(a: argparse.Namespace) -> None:
    lab = load_lab(a.lab, a.state_dir)
    if not lab.vnetds:
        raise LabError(f"lab {a.lab} has no vnetd (start it with `softudc lab up {a.lab} --segments N --vnetd`)")
    chosen = lab.vnetds if a.segment is None else [v for v in lab.vnetds if v.segment == a.segment]
    if not chosen:
        raise LabError(f"lab {a.lab} has no vnetd on segment {a.segment}")
    out = {f"segment-{v.segment}": LocalApiClient(v.api_socket).call(a.sub) for v in chosen}
    if a.json:
        _print(out, True)
        return
    for name, result in out.items():
        peers = result["peers"] if a.sub == "status" else result
        print(f"{name}:")
        for p in peers:
            state = "up" if p["up"] else "DOWN"
            print(f"  peer {p['address']:15} {state:4}  tx {p['tx']}  rx {p['rx']}  last seen {p['last_seen_s']} s")
        if a.sub == "status":
            print("  " + "  ".join(f"{k}={v}" for k, v in sorted(result["counts"].items())))


def cmd_bench(a: argparse.Namespace) -> None:
    from softudc.bench import run_bench

    designs = a.designs.split(",") if a.designs else None
    try:
        hosts = [int(n) for n in a.hosts.split(",")] if a.hosts else None
    except ValueError:
        raise CliError(f"--hosts {a.hosts}: give host counts separated by commas, e.g. 100,1000") from None
    seconds = a.seconds if a.seconds is not None else (20.0 if a.bench_name == "manager" else 5.0)
    run_bench(a.bench_name, reps=a.reps, as_json=a.json, seconds=seconds, offloads=a.offloads == "on",
              designs=designs, runs=a.runs or (3 if a.bench_name == "ha" else 10), hosts=hosts,
              backends=a.backends.split(",") if a.backends else None, flood=a.flood)


def cmd_demo(a: argparse.Namespace) -> None:
    from softudc.demo import run_demo

    run_demo(a.state_dir, keep=not a.down)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="softudc", description="SoftUDC: a software utility data center")
    p.add_argument("--state-dir", default=None, help="state directory (default $SOFTUDC_STATE_DIR or "
                   "~/.local/state/softudc)")
    sub = p.add_subparsers(dest="cmd", required=True)

    lab = sub.add_parser("lab", help="simulated hosts as network namespaces").add_subparsers(dest="sub", required=True)
    up = lab.add_parser("up", help="create a lab and start a gatekeeper per host")
    up.add_argument("name")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--segments", type=int, default=1)
    up.add_argument("--mtu", type=int, default=1500, help="underlay MTU")
    up.add_argument("--transport", choices=["udp", "raw"], default="udp")
    up.add_argument("--flood", choices=["multicast", "members"], default="multicast")
    up.add_argument("--no-gatekeepers", action="store_true")
    up.add_argument("--no-offloads", action="store_true", help="turn off TSO/GSO/GRO on the underlay NICs")
    up.add_argument("--vnetd", action="store_true", help="a vnetd per segment (multicast does not cross the router)")
    up.add_argument("--vnetd-peering", choices=["mesh", "chain"], default="mesh")
    up.add_argument("--vms", action="store_true", help="a libvirtd per host, for real QEMU guests")
    up.add_argument("--manager", action="store_true", help="run the manager and join every host to it")
    up.add_argument("--ha", action="store_true", help="with --manager: two managers (10.99.0.1, .2) on a "
                    "3-member etcd cluster (10.99.0.5-.7); the gatekeepers list both")
    up.add_argument("--power", choices=["lab", "ipmi"], default="lab", help="hosts' power driver: lab (stops and "
                    "starts their processes) or ipmi (an ipmi_sim BMC per host, on 10.99.0.1:6231...)")
    up.set_defaults(fn=cmd_lab_up)
    down = lab.add_parser("down", help="remove a lab: namespaces, links, processes")
    down.add_argument("name")
    down.set_defaults(fn=cmd_lab_down)
    pr = lab.add_parser("prometheus", help="write a Prometheus configuration (scrape targets, rules) for a lab")
    pr.add_argument("name")
    pr.set_defaults(fn=cmd_lab_prometheus)
    st = lab.add_parser("status")
    st.add_argument("name")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_lab_status)
    ep = lab.add_parser("endpoint", help="guest namespaces plugged into VNETs").add_subparsers(dest="op", required=True)
    add = ep.add_parser("add")
    add.add_argument("lab")
    add.add_argument("name")
    add.add_argument("--host", required=True)
    add.add_argument("--vnet", type=int, required=True)
    add.add_argument("--ip", required=True, help="address/prefix, e.g. 10.0.0.1/24")
    add.add_argument("--mac")
    add.set_defaults(fn=cmd_endpoint_add)
    mv = ep.add_parser("move")
    mv.add_argument("lab")
    mv.add_argument("name")
    mv.add_argument("--to", required=True)
    mv.set_defaults(fn=cmd_endpoint_move)
    rm = ep.add_parser("rm")
    rm.add_argument("lab")
    rm.add_argument("name")
    rm.set_defaults(fn=cmd_endpoint_rm)

    def host_cmd(parent: Any, name: str, fn: Callable[[argparse.Namespace], None], vnet: bool) -> Any:
        c = parent.add_parser(name)
        c.add_argument("--lab", required=True)
        c.add_argument("--host", default="all", help="a host name, or 'all'")
        c.add_argument("--json", action="store_true")
        if vnet:
            c.add_argument("vnet", type=int)
        c.set_defaults(fn=fn)
        return c

    vn = sub.add_parser("vnet", help="VNETs on lab hosts (through their gatekeepers)").add_subparsers(
        dest="sub", required=True)
    host_cmd(vn, "create", cmd_vnet_create, True).add_argument("--transport", choices=["udp", "raw"])
    host_cmd(vn, "delete", cmd_vnet_delete, True)
    host_cmd(vn, "list", cmd_vnet_list, False)
    varp = sub.add_parser("varp", help="VARP state").add_subparsers(dest="sub", required=True)
    host_cmd(varp, "cache", cmd_varp_cache, False)
    host_cmd(sub, "counters", cmd_counters, False)

    vd = sub.add_parser("vnetd", help="wide-area relays of a lab").add_subparsers(dest="sub", required=True)
    for name in ("status", "peers"):
        c = vd.add_parser(name)
        c.add_argument("--lab", required=True)
        c.add_argument("--segment", type=int)
        c.add_argument("--json", action="store_true")
        c.set_defaults(fn=cmd_vnetd)

    from softudc.cli import admin, farm, image, manager, vm

    vm.add_parser(sub)
    image.add_parsers(sub)
    farm.add_parser(sub)
    manager.add_parsers(sub)
    admin.add_parsers(sub)

    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("bench_name", choices=["balance", "console", "dataplane", "ha", "images", "manager",
                                              "migration", "placement", "reconcile", "volumes"])
    bench.add_argument("--runs", type=int, help="migrations per mode (migration, default 10); host kills (ha, "
                                                "default 3)")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--reps", type=int, default=3)
    bench.add_argument("--seconds", type=float, help="iperf3 duration per test (default 5); manager: the steady "
                       "window per run (default 20)")
    bench.add_argument("--hosts", help="manager: simulated host counts, e.g. 100,1000,5000 (the default)")
    bench.add_argument("--backends", help="manager: stores, e.g. sqlite,etcd (the default)")
    bench.add_argument("--designs", help="comma-separated subset, e.g. vxlan,ours_udp (default: all)")
    bench.add_argument("--offloads", choices=["on", "off"], default="on",
                       help="TSO/GSO/GRO on the underlay NICs (off: every underlay packet is a real <= MTU packet)")
    bench.add_argument("--flood", choices=["multicast", "members"], default="multicast",
                       help="migration: how the lab's VNETs flood (multicast group, or a unicast copy per member host)")
    bench.set_defaults(fn=cmd_bench)

    demo = sub.add_parser("demo", help="the main job: a lab, two VNETs, endpoints pinging across hosts")
    demo.add_argument("--down", action="store_true", help="remove the lab at the end (default: leave it up)")
    demo.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.cmd == "init":
        from softudc.cli.manager import init_defaults

        init_defaults(args)
    try:
        args.fn(args)
    except (CliError, LocalApiError, CommandError, ValueError) as e:
        print(f"softudc: {e}", file=sys.stderr)
        sys.exit(1)
    except FileNotFoundError as e:
        print(f"softudc: {e.filename}: not found (is the lab up? `softudc lab status NAME`)", file=sys.stderr)
        sys.exit(1)
    except ConnectionRefusedError:
        print("softudc: the gatekeeper is not answering (see `softudc lab status NAME`)", file=sys.stderr)
        sys.exit(1)
