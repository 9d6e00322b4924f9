"""`softudc bench ha`: in a lab, the time from killing a host to all its VMs answering elsewhere
(issue 12, item 8; target <= 30 s including the heartbeat timeout).

A lab of 3 hosts with a manager and a power driver each (`ipmi`: an ipmi_sim BMC per host, or
`lab`); the manager runs with SOFTUDC_HOST_DOWN_AFTER_S = the heartbeat timeout. A farm of two tiny
guests kept apart (anti-affinity, one per host) and an endpoint on the VNET, plugged into the host
of the first guest (never killed). Each run kills the other guest's host (every process of its
namespace, by PID: gatekeeper, libvirtd, QEMU; its BMC is not told) and measures, from the kill:

    placed_s     the manager placed the guest on another host (missed heartbeats, fenced, restarted)
    answering_s  the guest answers HTTP on its VNET address from the endpoint (booted again)

then powers the host on through the manager (`POST /v1/hosts/H/power on`) and waits until it
reports again (its `Recovered` event) and is `ready` before the next run. The result is the median of the runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from softudc.lab import Lab, LabSpec, lab_down, lab_up, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get
from softudc.lab.manager import call

TARGET_S = 30.0
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: hb}
spec:
  vnets: [{name: net, subnet: 10.6.0.0/24}]
  placementGroups: [{name: spread, policy: anti-affinity, maxPerHost: 1}]
  vms:
    - {name: a, replicas: 2, memory: 128Mi, image: test-guest, placementGroup: spread,
       nics: [{vnet: net, address: pool}]}
"""
ENDPOINT_IP = "10.6.0.200/24"


def summary(runs: list[dict[str, float]], heartbeat_timeout_s: float) -> dict[str, Any]:
    """The `ha_restart` section: the runs, their medians, the heartbeat timeout and the target."""
    def median(key: str) -> float | None:
        values = [r[key] for r in runs if key in r]
        return round(statistics.median(values), 1) if values else None

    med = median("answering_s")
    return {"runs": len(runs), "median_s": med, "median_placed_s": median("placed_s"),
            "heartbeat_timeout_s": heartbeat_timeout_s, "target_s": TARGET_S,
            "met": med is not None and med <= TARGET_S, "per_run": runs}


def victim(placed: dict[str, str], keep: str) -> str:
    """The host to kill: one holding a guest, never `keep` (the endpoint's host); the first by name."""
    hosts = sorted({h for h in placed.values() if h != keep})
    if not hosts:
        raise RuntimeError(f"every guest runs on {keep}, the endpoint's host: nothing to kill ({placed})")
    return hosts[0]


def wait(what: str, ok: Callable[[], bool], timeout: float, interval: float = 0.5) -> float:
    """Seconds until ok() held; a TimeoutError naming `what` after `timeout`."""
    t0 = time.monotonic()
    while not ok():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - t0


def _get(lab: Lab, path: str) -> Any:
    status, body = call(lab, "GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body}")
    return body


def _instances(lab: Lab) -> list[dict[str, Any]]:
    status: dict[str, Any] = _get(lab, "/v1/farms/hb")["status"]
    return list(status.get("instances", []))


def _kill(lab: Lab, host: str) -> None:
    """A crash: every process of the host's namespace killed by PID; its BMC is not told."""
    for pid in shell.netns_pids(lab.host(host).netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _answers(netns: str, address: str) -> bool:
    return bool(http_get(netns, f"http://{address}/counter"))


def one_run(lab: Lab, netns: str, keep: str, timeout: float = 180.0) -> dict[str, Any]:
    """Kill a host holding a guest; the seconds until it is placed elsewhere and answers there."""
    where = {i["name"]: i for i in _instances(lab)}
    host = victim({n: i["host"] for n, i in where.items()}, keep)
    moved = sorted(n for n, i in where.items() if i["host"] == host)
    t0 = time.monotonic()
    _kill(lab, host)

    def placed() -> bool:
        return all(i["host"] != host for i in _instances(lab) if i["name"] in moved)

    placed_s = wait(f"{', '.join(moved)} placed off {host}", placed, timeout)
    now = [i for i in _instances(lab) if i["name"] in moved]
    addresses = [i["addresses"]["net"] for i in now]
    try:
        wait(f"{', '.join(moved)} answering", lambda: all(_answers(netns, a) for a in addresses),
             timeout - placed_s, interval=0.2)
    except TimeoutError as e:
        raise TimeoutError(f"{e}: placed {placed_s:.1f} s after {host} was killed: "
                           f"{[{k: i.get(k) for k in ('name', 'host', 'state', 'addresses')} for i in now]}") from None
    answering_s = time.monotonic() - t0
    recovered = _recovered(lab, host)
    status, body = call(lab, "POST", f"/v1/hosts/{host}/power", json.dumps({"action": "on"}))
    if status != 200:
        raise RuntimeError(f"powering {host} on: {status} {body}")
    back_s = wait(f"{host} reporting again", lambda: _recovered(lab, host) > recovered and _state(lab, host) == "ready",
                  120, interval=1)
    return {"host": host, "vms": len(moved), "placed_s": round(placed_s, 1), "answering_s": round(answering_s, 1),
            "power_on_to_ready_s": round(back_s, 1)}


def _recovered(lab: Lab, host: str) -> int:
    """How many times the host reported again after a fence (its `Recovered` events)."""
    return sum(e.get("type") == "Recovered" for e in _get(lab, f"/v1/events?kind=host&name={host}"))


def _state(lab: Lab, host: str) -> str:
    return str(next((h.get("state") for h in _get(lab, "/v1/hosts") if h.get("name") == host), ""))


def _measure(lab: Lab, runs: int) -> list[dict[str, Any]]:
    if call(lab, "PUT", "/v1/farms/hb", FARM)[0] != 200:
        raise RuntimeError("the manager refused the bench's farm")
    wait("farm hb ready", lambda: bool(_get(lab, "/v1/farms/hb")["status"].get("conditions", {}).get("Ready")), 180)
    keep = next(i["host"] for i in _instances(lab) if i["name"] == "a-0")
    vnet = int(_get(lab, "/v1/farms/hb")["status"]["vnet_ids"]["net"])
    netns = add_endpoint(lab, "hab", keep, vnet, ENDPOINT_IP).netns
    wait("every guest answering", lambda: all(_answers(netns, i["addresses"]["net"]) for i in _instances(lab)), 180)
    out = []
    for n in range(runs):
        r = one_run(lab, netns, keep)
        print(f"[ha {n + 1}/{runs}] kill {r['host']}: placed elsewhere {r['placed_s']:.1f} s, answering "
              f"{r['answering_s']:.1f} s (powered on, ready {r['power_on_to_ready_s']:.1f} s later)",
              file=sys.stderr, flush=True)
        out.append(r)
    return out


def keep_logs(lab: Lab) -> str:
    """A copy of the lab's logs (daemons' and guests' consoles), which go with the lab; its path."""
    keep = tempfile.mkdtemp(prefix="sudcha-logs")
    for log in lab.dir.rglob("*.log"):
        to = Path(keep) / log.relative_to(lab.dir)
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, to)
    return keep


def run_ha(runs: int = 3, heartbeat_timeout_s: float = 8.0, power: str = "ipmi",
           state_dir: str | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("softudc bench ha needs root (it builds a lab of network namespaces and guests)")
    if runs < 1:
        raise ValueError(f"runs: {runs}: at least 1")
    before = os.environ.get("SOFTUDC_HOST_DOWN_AFTER_S")
    os.environ["SOFTUDC_HOST_DOWN_AFTER_S"] = f"{heartbeat_timeout_s:g}"  # the lab's manager inherits it
    state = state_dir or tempfile.mkdtemp(prefix="sudcha")
    try:
        lab = lab_up(LabSpec("hb" + secrets.token_hex(3), hosts=3, power=power, vms=True, manager=True), state)
        try:
            per_run = _measure(lab, runs)
        except Exception:
            print(f"softudc bench ha failed; the lab's logs are kept in {keep_logs(lab)}", file=sys.stderr)
            raise
        finally:
            lab_down(lab.spec.name, state)
    finally:
        if state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
        if before is None:
            os.environ.pop("SOFTUDC_HOST_DOWN_AFTER_S", None)
        else:
            os.environ["SOFTUDC_HOST_DOWN_AFTER_S"] = before
    return {"benchmark": "ha", "power": power, "accel": lab.accel,
            "ha_restart": summary(per_run, heartbeat_timeout_s)}
