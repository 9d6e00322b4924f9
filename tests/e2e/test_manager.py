"""The manager drives a lab: a farm applied from YAML is placed, every host's gatekeeper
converges to its part over mutual TLS, VMs reach each other on their VNETs, scaling changes only
what changed, migrations go through the manager, restarts of a gatekeeper or of the manager lose
and duplicate nothing, and deleting the farm leaves nothing on any host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from softudc.lab import Lab
from softudc.lab.endpoint import add_endpoint, remove_endpoint
from softudc.lab.guest import http_get, wait_for_page
from softudc.lab.lab import start_gatekeeper
from softudc.lab.manager import MANAGER_ADDR, METRICS_PORT, call, start_manager
from softudc.lab.prometheus import query_api, start_prometheus
from softudc.lab.shell import stop_pid
from tests.e2e.conftest import gk, ns_run, wait_until

pytestmark = [pytest.mark.manager, pytest.mark.vm]
DEMO = (Path(__file__).parents[2] / "configs" / "farms" / "demo.yaml").read_text()


def farm(lab: Lab) -> dict[str, Any]:
    status, body = call(lab, "GET", "/v1/farms/demo")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def running(lab: Lab) -> dict[str, str]:
    """VM -> the host it runs on; fails if any VM runs on two hosts."""
    pairs = [(vm["name"], h.name) for h in lab.hosts for vm in gk(lab, h.name).call("vm.list")
             if vm["state"] == "running"]
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), f"a VM runs twice: {sorted(pairs)}"
    return dict(pairs)


def cli(lab: Lab, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "softudc.cli", "--state-dir", lab.state_dir, *args,
                          "--lab", lab.spec.name], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def host_leftovers(lab: Lab, host: str) -> list[str]:
    """What a farm could leave on a host: links (bridges, TAPs), VNETs in the gatekeeper's state,
    libvirt domains (defined or running)."""
    links = json.loads(ns_run(lab.host(host).netns, "ip", "-d", "-j", "link").stdout)
    left = [f"link {link['ifname']}" for link in links
            if link.get("linkinfo", {}).get("info_kind") in ("bridge", "tun")]
    hdir = Path(lab.host(host).api_socket).parent
    state = json.loads((hdir / "gatekeeper-state.json").read_text()) if (hdir / "gatekeeper-state.json").exists() \
        else {}
    left += [f"state vnet {v}" for v in state.get("vnets", [])]
    managed = json.loads((hdir / "gatekeeper-managed.json").read_text()).get("managed_vnets", [])
    left += [f"managed vnet {v}" for v in managed]
    left += [f"domain {vm['name']}" for vm in gk(lab, host).call("vm.list")]
    left += [f"vnet {v['vnet']}" for v in gk(lab, host).call("vnet.list")]
    return left


def instances(lab: Lab) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in farm(lab)["status"]["instances"]}


def promql(lab: Lab, expr: str) -> dict[str, float]:
    """A Prometheus query's answer: the first label's value (or "") -> the sample's value."""
    answer = query_api(lab, f"http://127.0.0.1:9090/api/v1/query?query={quote(expr)}")["result"]
    return {next(iter(r["metric"].values()), ""): float(r["value"][1]) for r in answer}


def page(ns: str, ip: str, path: str = "counter") -> str:
    return http_get(ns, f"http://{ip}/{path}")


def test_apply_scale_migrate_restart_and_delete_a_farm(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=3, vms=True, manager=True)
    status, _ = call(lab, "PUT", "/v1/farms/demo", DEMO)
    assert status == 200
    assert wait_until(lambda: farm(lab)["status"]["conditions"]["Ready"], timeout=120), farm(lab)["status"]
    placed = {f"demo--{i['name']}": i["host"] for i in farm(lab)["status"]["instances"]}
    assert running(lab) == placed  # every VM runs on the host its plan names, once
    webs = [h for name, h in placed.items() if "--web-" in name]
    assert len(webs) == 3 and len(set(webs)) == 3  # anti-affinity
    # Over the front VNET, an admin's namespace reaches the web tier on every host.
    front = farm(lab)["status"]["vnet_ids"]["front"]
    add_endpoint(lab, "admin", "h1", front, "10.0.0.200/24")
    ns = lab.endpoints["admin"].netns
    for inst in farm(lab)["status"]["instances"]:
        if inst["vm"] == "web":
            assert wait_for_page(ns, f"http://{inst['addresses']['front']}/index.html", timeout=60) == \
                f"demo--{inst['name']}"

    # The web guests reach each other across hosts: each pings and fetches its two peers.
    for inst in farm(lab)["status"]["instances"]:
        if inst["vm"] == "web":
            def reaches_both(front: str = inst["addresses"]["front"]) -> bool:
                probe = page(ns, front, "probe")
                return probe.count("ping=ok") == 2 and probe.count("http=demo--web-") == 2

            assert wait_until(reaches_both, timeout=60, interval=1), page(ns, inst["addresses"]["front"], "probe")
    # get and describe show the same as the hosts.
    vms = json.loads(cli(lab, "get", "vms", "-o", "json"))
    assert {f"demo--{v['name']}": v["host"] for v in vms} == running(lab)
    assert {v["state"] for v in vms} == {"running"}
    described = cli(lab, "describe", "farm", "demo")
    assert "Ready=True" in described and all(f"{v['name']}" in described for v in vms)
    assert "front" in cli(lab, "get", "vnets") and "h1" in cli(lab, "host", "list")
    # The manager's metrics, scraped on the management network.
    scrape = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    text = ns_run(lab.mgmt_ns, sys.executable, "-c", scrape, f"http://{MANAGER_ADDR}:{METRICS_PORT}/metrics").stdout
    assert 'softudc_manager_farm_ready{farm="demo"} 1.0' in text and 'softudc_manager_hosts{state="ready"} 3.0' in text
    # A real Prometheus (issue 15) scrapes the lab: the VMs per host it sees are the lab's.
    prometheus = start_prometheus(lab)
    on_hosts = {h.name: sum(1 for where in running(lab).values() if where == h.name) for h in lab.hosts}
    assert wait_until(lambda: promql(lab, 'max by (host) (softudc_vms{state="running"})') == on_hosts,
                      timeout=30, interval=1), promql(lab, "softudc_vms")

    # Scale 3 -> 2: exactly web-2 goes; the rest stay where they are.
    before = running(lab)
    call(lab, "PUT", "/v1/farms/demo", DEMO.replace("replicas: 3", "replicas: 2"))
    assert wait_until(lambda: "demo--web-2" not in running(lab), timeout=60)
    assert running(lab) == {k: v for k, v in before.items() if k != "demo--web-2"}

    # Migrate web-0 live to the host web-2 left, through the manager: same guest, still counting.
    web0 = instances(lab)["web-0"]
    free = before["demo--web-2"]
    ip = web0["addresses"]["front"]
    count = int(page(ns, ip) or -1)
    moved = cli(lab, "vm", "migrate", "demo/web-0", "--to", free, "--timeout", "240")
    assert f"now runs on {free}" in moved and "live, " in moved and "downtime" in moved
    assert instances(lab)["web-0"]["host"] == free and "migrating" not in instances(lab)["web-0"]
    assert wait_until(lambda: running(lab).get("demo--web-0") == free, timeout=30)
    assert wait_until(lambda: int(page(ns, ip) or -1) > count >= 0, timeout=30)  # not restarted
    types = [e["type"] for e in farm(lab)["events"]]
    assert "Migrating" in types and "Migrated" in types
    # ... and the migration in its counter and histograms (the downtime the destination measured).
    seen = {"softudc_migrations_total": 1, "softudc_migration_downtime_seconds_count": 1,
            "softudc_migration_duration_seconds_count": 1}
    assert wait_until(lambda: {m: promql(lab, f"max({m})").get("") for m in seen} == seen,
                      timeout=30, interval=1), {m: promql(lab, f"max({m})") for m in seen}
    assert promql(lab, 'max(softudc_migrations_total{result="completed"})') == {"": 1}
    assert 0 < promql(lab, "max(softudc_migration_downtime_seconds_sum)")[""] < 10
    stop_pid(prometheus)

    # Scale 2 -> 3: exactly one VM is created (web-2, on the host web-0 left); nothing else moves.
    before = running(lab)
    call(lab, "PUT", "/v1/farms/demo", DEMO)
    assert wait_until(lambda: "demo--web-2" in running(lab), timeout=120)
    after = running(lab)
    assert {k: v for k, v in after.items() if k != "demo--web-2"} == before
    assert after["demo--web-2"] == web0["host"]

    # Remove the db VM from the descriptor: only db-0 goes, and its secured VNET with it.
    db_host = after["demo--db-0"]
    no_db = DEMO[:DEMO.index("    - name: db")]
    assert call(lab, "PUT", "/v1/farms/demo", no_db)[0] == 200
    assert wait_until(lambda: "demo--db-0" not in running(lab), timeout=60)
    assert running(lab) == {k: v for k, v in after.items() if k != "demo--db-0"}
    back = farm(lab)["status"]["vnet_ids"].get("back")
    assert back is None or wait_until(lambda: back not in [v["vnet"] for v in gk(lab, db_host).call("vnet.list")],
                                      timeout=30)

    # A gatekeeper crashes and comes back: its VMs are neither lost nor started twice.
    victim = lab.host(web0["host"] if web0["host"] != "h1" else free)
    mine = sorted(n for n, h in running(lab).items() if h == victim.name)
    assert mine and victim.pid
    counts = {n: int(wait_for_page(ns, f"http://{instances(lab)[n.split('--')[1]]['addresses']['front']}/counter",
                                   timeout=60)) for n in mine}
    os.kill(victim.pid, signal.SIGKILL)
    time.sleep(3)  # the manager hears nothing from it meanwhile; nothing may be re-placed
    start_gatekeeper(lab, victim)
    lab.save()
    time.sleep(3)  # a few sync rounds
    assert running(lab) == {k: v for k, v in after.items() if k != "demo--db-0"}
    for n, c in counts.items():
        addr = instances(lab)[n.split("--")[1]]["addresses"]["front"]

        def counted_on(a: str = addr, c: int = c) -> bool:
            return int(page(ns, a) or -1) > c >= 0

        assert wait_until(counted_on, timeout=30), n  # same guests

    # The manager restarts: it loses nothing and changes nothing on the hosts.
    before_restart = farm(lab)
    assert lab.manager_pid
    stop_pid(lab.manager_pid)
    lab.manager_pid, _ = start_manager(lab, fresh=False)
    lab.save()
    again = farm(lab)
    assert again["status"]["instances"] == before_restart["status"]["instances"]
    assert again["spec"] == before_restart["spec"]
    time.sleep(3)
    assert running(lab) == {k: v for k, v in after.items() if k != "demo--db-0"}

    # Delete: no domain, TAP, bridge or VNET state left on any host.
    remove_endpoint(lab, "admin")
    assert call(lab, "DELETE", "/v1/farms/demo")[0] == 200
    assert wait_until(lambda: not any(host_leftovers(lab, h.name) for h in lab.hosts), timeout=90), \
        {h.name: host_leftovers(lab, h.name) for h in lab.hosts}
