"""`softudc demo` (what `make demo` runs): a 3-host lab (a libvirtd and a gatekeeper per host)
driven by the manager. The farm in configs/farms/demo.yaml is planned and applied: two VNETs on
one subnet (back secured with ESP), a web tier spread across the hosts, a database. The web
guests ping and fetch each other across hosts, the database is live-migrated through the manager
under a 10 ms ping, and the demo prints where everything runs. The lab stays up to explore."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from softudc.cli.admin import get_rows, migrate_managed, print_table
from softudc.cli.connect import LabApi
from softudc.cli.errors import CliError, ok
from softudc.lab import Lab, LabSpec, lab_down, lab_up
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get, wait_for_page
from softudc.lab.manager import MANAGER_ADDR, METRICS_PORT, admin_token, call, manager_dir
from softudc.model.hoststate import vm_name

NAME = "demo"
FARM = Path(__file__).resolve().parents[1] / "configs" / "farms" / "demo.yaml"
ADMIN_IP = "10.0.0.250"


def step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_demo(state_dir: str | None, keep: bool = True) -> None:
    lab_down(NAME, state_dir)  # idempotent: a previous demo is replaced
    t0 = time.monotonic()
    step("lab: 3 hosts (network namespaces), each with a libvirtd and a gatekeeper; the manager on the "
         "management network, every host joined with a one-time token (mutual TLS from then on)")
    lab = lab_up(LabSpec(NAME, hosts=3, vms=True, manager=True), state_dir, progress=True)
    failures = _apply(lab)
    instances = _instances(lab)
    failures += _probe(lab, instances)
    failures += _migrate(lab, instances)
    step("where everything runs (softudc host list / get vms / get vnets)")
    for what in ("hosts", "vms", "vnets"):
        rows, columns, _ = get_rows(LabApi(lab), what)
        print_table(rows, columns)
        print()
    print(f"  ready in {time.monotonic() - t0:.0f} s. Try:")
    print("    .venv/bin/softudc get vms --lab demo -o wide")
    print("    .venv/bin/softudc describe farm demo --lab demo")
    print("    .venv/bin/softudc vm migrate demo/db-0 --to h1 --lab demo")
    print("    sed 's/replicas: 3/replicas: 2/' configs/farms/demo.yaml | tee /tmp/demo2.yaml"
          " && .venv/bin/softudc diff -f /tmp/demo2.yaml --lab demo")
    print(f"    ip netns exec {lab.mgmt_ns} curl -s http://{lab.host('h1').mgmt_ip}:9464/metrics | grep softudc_vnet")
    print(f"    ip netns exec {lab.mgmt_ns} curl -s http://{MANAGER_ADDR}:{METRICS_PORT}/metrics"
          " | grep softudc_manager")
    _console(lab)
    if keep:
        print("  the lab stays up; remove it with: .venv/bin/softudc lab down demo")
    else:
        lab_down(NAME, state_dir)
    if failures:
        print(f"\ndemo: {failures} step(s) failed", file=sys.stderr)
        sys.exit(1)


def _apply(lab: Lab) -> int:
    text = FARM.read_text()
    step(f"plan of {FARM.parent.parent.name}/{FARM.parent.name}/{FARM.name} (softudc apply --dry-run)")
    plan = ok(*call(lab, "POST", "/v1/farms/demo/plan", text))
    for i in plan["create"]:
        addrs = " ".join(f"{v}:{a}" for v, a in sorted(i["addresses"].items()))
        print(f"  + {i['name']:6} on {i['host']}  {addrs}")
    for name, why in plan["unplaced"].items():
        print(f"  ! {name} cannot be placed: " + "; ".join(why))
    step("apply: the manager stores the farm; each gatekeeper fetches its part and converges")
    ok(*call(lab, "PUT", "/v1/farms/demo", text))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        st = ok(*call(lab, "GET", "/v1/farms/demo"))["status"]
        ready = sum(1 for i in st["instances"] if _running_on(lab, i))
        print(f"\r  {ready}/{len(st['instances'])} VMs running  {time.monotonic() - t0:4.0f} s", end="", flush=True)
        if st["conditions"].get("Ready"):
            print(f"\n  farm demo is Ready: VNETs {st['vnet_ids']}")
            return 0
        time.sleep(1)
    print("\n  FAILED: the farm did not become Ready in 180 s (see `softudc describe farm demo --lab demo`)")
    return 1


def _running_on(lab: Lab, inst: dict[str, Any]) -> bool:
    return any(vm_name("demo", inst["name"]) in h.get("running", []) and h["name"] == inst["host"]
               for h in ok(*call(lab, "GET", "/v1/hosts")))


def _instances(lab: Lab) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in ok(*call(lab, "GET", "/v1/farms/demo"))["status"]["instances"]}


def _probe(lab: Lab, instances: dict[str, dict[str, Any]]) -> int:
    step("web guests ping and fetch each other across hosts over VNET front (each guest's /probe)")
    vnets = ok(*call(lab, "GET", "/v1/farms/demo"))["status"]["vnet_ids"]
    add_endpoint(lab, "admin", "h1", vnets["front"], f"{ADMIN_IP}/24")  # an admin's window into front
    ns = lab.endpoints["admin"].netns
    failures = 0
    for name, inst in sorted(instances.items()):
        if "front" not in inst["addresses"]:
            continue
        ip = inst["addresses"]["front"]
        peers = len([i for i in instances.values() if "front" in i["addresses"]]) - 1
        try:
            # Every peer answers both ping and HTTP: as many "ping=ok" and "http=demo--" as peers.
            report = wait_for_page(ns, f"http://{ip}/probe", timeout=120)
            deadline = time.monotonic() + 60
            while report.count("ping=ok") < peers or report.count("http=demo--") < peers:
                if time.monotonic() > deadline:
                    raise TimeoutError(report.replace("\n", "; "))
                time.sleep(1)
                report = http_get(ns, f"http://{ip}/probe")
            for line in report.splitlines():
                print(f"  {name} ({inst['host']}, {ip}) -> {line}")
        except TimeoutError as e:
            failures += 1
            print(f"  {name} ({inst['host']}): FAILED ({e})")
    db = instances.get("db-0", {}).get("addresses", {}).get("back")
    if db:
        seen = http_get(ns, f"http://{db}/index.html")
        print(f"  isolation: {db} is db-0 on VNET back; from front it is {seen or 'unreachable'!r}")
        failures += bool(seen and "db" in seen)
    return failures


def _migrate(lab: Lab, instances: dict[str, dict[str, Any]]) -> int:
    db = instances["db-0"]
    src = db["host"]
    dest = next(h.name for h in lab.hosts if h.name != src)
    ip = db["addresses"]["back"]
    step(f"live migration through the manager: db-0 {src} -> {dest} on the ESP-secured VNET back, "
         "pinged every 10 ms")
    vnets = ok(*call(lab, "GET", "/v1/farms/demo"))["status"]["vnet_ids"]
    add_endpoint(lab, "adminb", src, vnets["back"], f"{ADMIN_IP}/24")  # keeps VNET back on the source
    ns = lab.endpoints["adminb"].netns
    before = wait_for_page(ns, f"http://{ip}/counter", timeout=60)
    pinger = subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-D", "-i", "0.01", ip],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    try:
        migrate_managed(LabApi(lab), "demo", "db-0", dest, timeout=300)
    except CliError as e:
        print(f"  FAILED: {e}")
        return 1
    finally:
        time.sleep(1)
        pinger.send_signal(2)
        out, _ = pinger.communicate(timeout=10)
    stamps = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\].*icmp_seq", out, re.M)]
    gap = max((b - a for a, b in itertools.pairwise(stamps)), default=0) * 1000
    after = http_get(ns, f"http://{ip}/counter")
    print(f"  longest ping gap {gap:.0f} ms; the guest's uptime counter went {before} -> {after}: "
          "the same guest, still running")
    return 0 if after.isdigit() and int(after) > int(before) else 1


def _console(lab: Lab) -> None:
    """Where the web console is and how a browser outside the lab reaches it."""
    fwd = (f"socat TCP-LISTEN:8443,bind=127.0.0.1,fork,reuseaddr "  # socat needs the inner colons escaped
           f"'EXEC:ip netns exec {lab.mgmt_ns} socat STDIO TCP\\:{MANAGER_ADDR}\\:8443'")
    print(f"  console: https://{MANAGER_ADDR}:8443/console/ (in the lab's management namespace {lab.mgmt_ns})")
    print(f"    log in with the admin token: {admin_token(lab)}  (also in {manager_dir(lab) / 'admin.token'})")
    print(f"    from this machine's browser, forward a port (as root; Debian package socat): {fwd}")
    print("      then open https://127.0.0.1:8443/console/ (the manager's certificate is from the lab's CA: "
          f"{manager_dir(lab) / 'pki' / 'ca.crt'}); from another machine: ssh -L 8443:127.0.0.1:8443 this-machine")
