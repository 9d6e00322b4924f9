"""Load reporting and host drain on a real lab (3 hosts with libvirtd, a manager, two tiny guests
kept apart by anti-affinity): the hosts' load reaches the manager (GET /v1/load/hosts|vms); a host
drained is empty and in maintenance, anti-affinity still holds and the guests answer over their
VNET; a drain that cannot be done (the only other ready host already holds the group's other
guest) names the VM, moves nothing and leaves the host's state alone; undrain -> ready. `drain
--power-off` of the empty host cuts it (lab driver) with its identify LED lit; undrain powers it on
and waits for its report."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.cli.main import main as cli
from softudc.lab import Lab, LabSpec, lab_down, lab_up, load_lab, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import wait_for_page
from softudc.lab.manager import call
from softudc.power.lab import LabPower
from tests.e2e.conftest import _print_logs, _why_not_root, gk, wait_until

pytestmark = [pytest.mark.balance, pytest.mark.vm]
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: dr}
spec:
  vnets: [{name: net, subnet: 10.8.0.0/24}]
  placementGroups: [{name: spread, policy: anti-affinity, maxPerHost: 1}]
  vms:
    - {name: a, replicas: 2, memory: 128Mi, image: test-guest, placementGroup: spread,
       migration: {policy: live, maxDowntimeMs: 100}, nics: [{vnet: net, address: pool}]}
"""


def three_hosts(request: pytest.FixtureRequest, prefix: str, power: str = "lab") -> Iterator[Lab]:
    """A lab of 3 hosts with libvirtd, a manager and `power` drivers, removed after the module."""
    reason = _why_not_root()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    state = tempfile.mkdtemp(prefix=f"sudc{prefix}")
    failed_before = request.session.testsfailed
    made = lab_up(LabSpec(name=prefix + secrets.token_hex(3), hosts=3, vms=True, manager=True, power=power), state)
    try:
        yield made
    finally:
        if request.session.testsfailed > failed_before:
            _print_logs(made, lines=200)
        lab_down(made.spec.name, state)
        shutil.rmtree(state, ignore_errors=True)
        assert not [ns for ns in shell.netns_list() if ns.startswith(made.prefix)], "lab down left namespaces"


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    yield from three_hosts(request, "dr")


def get(lab: Lab, path: str) -> Any:
    status, body = call(lab, "GET", path)
    assert status == 200, (path, body)
    return body


def instances(lab: Lab) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in get(lab, "/v1/farms/dr")["status"]["instances"]}


def running(lab: Lab) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for h in lab.hosts:
        for d in gk(lab, h.name).call("vm.list"):
            if d["state"] == "running":
                out.setdefault(d["name"], []).append(h.name)
    return out


def answers(lab: Lab, ns: str) -> None:
    for name, inst in instances(lab).items():
        assert wait_for_page(ns, f"http://{inst['addresses']['net']}/index.html", timeout=90) == f"dr--{name}"


def test_load_is_reported_and_a_drain_empties_a_host_keeping_anti_affinity(lab: Lab) -> None:
    assert call(lab, "PUT", "/v1/farms/dr", FARM)[0] == 200
    assert wait_until(lambda: get(lab, "/v1/farms/dr")["status"]["conditions"]["Ready"], timeout=120, interval=1)
    placed = {n: i["host"] for n, i in instances(lab).items()}
    src, keep = placed["a-0"], placed["a-1"]
    for n, h in placed.items():  # migrate booted guests (one moved in its first second under TCG can panic)
        console = lab.dir / h / "consoles" / f"dr--{n}.log"

        def booted(c: Path = console) -> bool:
            return c.exists() and "GUEST_READY" in c.read_text(errors="replace")

        assert wait_until(booted, timeout=120, interval=1), f"{n} did not boot"
    add_endpoint(lab, "adm", keep, get(lab, "/v1/farms/dr")["status"]["vnet_ids"]["net"], "10.8.0.200/24")
    ns = lab.endpoints["adm"].netns
    answers(lab, ns)

    # The hosts' load reaches the manager: memory of the guests, per host and per VM.
    assert wait_until(lambda: all(r.get("samples", 0) >= 2 and r["memory_mib"]["short"] > 0
                                  for r in get(lab, "/v1/load/hosts") if r["host"] in (src, keep)),
                      timeout=30, interval=1), get(lab, "/v1/load/hosts")
    assert {v["vm"]: v["host"] for v in get(lab, "/v1/load/vms")} == {f"dr--{n}": h for n, h in placed.items()}

    # Drain src: a-0 can only go to the third host (anti-affinity keeps it off a-1's).
    status, body = call(lab, "POST", f"/v1/hosts/{src}/drain", "{}")
    assert status == 200, body
    assert wait_until(lambda: get(lab, f"/v1/hosts/{src}/drain")["state"] == "maintenance", timeout=180,
                      interval=1), (get(lab, f"/v1/hosts/{src}/drain"), get(lab, "/v1/farms/dr")["events"][-5:])
    done = get(lab, f"/v1/hosts/{src}/drain")
    assert done["moved"] == done["total"] == 1 and done["left"] == []
    now = {n: i["host"] for n, i in instances(lab).items()}
    third = next(h.name for h in lab.hosts if h.name not in (src, keep))
    assert now == {"a-0": third, "a-1": keep}
    assert running(lab) == {"dr--a-0": [third], "dr--a-1": [keep]}  # src holds nothing, each runs once
    answers(lab, ns)
    types = [e["type"] for e in get(lab, f"/v1/events?kind=host&name={src}")]
    assert {"Draining", "DrainMove", "Maintenance"} <= set(types)

    # Impossible now: a-1 could only go to src (in maintenance) or the third host (holds a-0).
    status, body = call(lab, "POST", f"/v1/hosts/{keep}/drain", "{}")
    assert status == 409 and "dr/a-1" in json.dumps(body) and "nothing was moved" in json.dumps(body), body
    assert {n: i["host"] for n, i in instances(lab).items()} == now
    assert next(h for h in get(lab, "/v1/hosts") if h["name"] == keep)["state"] == "ready"

    status, body = call(lab, "POST", f"/v1/hosts/{src}/undrain", "{}")
    assert status == 200 and isinstance(body, dict) and body["state"] == "ready", body
    assert wait_until(lambda: next(h for h in get(lab, "/v1/hosts") if h["name"] == src)["state"] == "ready",
                      timeout=10)


def test_drain_power_off_cuts_the_empty_host_lights_it_and_undrain_brings_it_back(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    empty = next(h.name for h in lab.hosts if h.name not in {i["host"] for i in instances(lab).values()})
    before = load_lab(lab.spec.name, lab.state_dir).host(empty).pid
    assert before and shell.pid_alive(before)
    base = ["--state-dir", lab.state_dir]
    t = time.monotonic()
    cli([*base, "host", "drain", empty, "--power-off", "--wait", "--timeout", "60", "--lab", lab.spec.name])
    assert capsys.readouterr().out.strip() == f"{empty}: maintenance, 0/0 moved, power off"
    off_s = time.monotonic() - t
    assert not shell.pid_alive(before) and shell.netns_pids(lab.host(empty).netns) == []  # cut
    assert LabPower(lab.spec.name, empty, lab.state_dir).identify_until() > time.time() + 200  # LED lit
    assert next(h for h in get(lab, "/v1/hosts") if h["name"] == empty)["state"] == "maintenance"
    t = time.monotonic()
    cli([*base, "host", "undrain", empty, "--timeout", "60", "--lab", lab.spec.name])
    assert capsys.readouterr().out.strip() == f"{empty}: ready"
    print(f"\nmeasured: drain --power-off of an empty host {off_s:.1f} s; undrain (power on, reported) "
          f"{time.monotonic() - t:.1f} s")
    after = load_lab(lab.spec.name, lab.state_dir).host(empty).pid
    assert after and after != before and shell.pid_alive(after)
    assert LabPower(lab.spec.name, empty, lab.state_dir).identify_until() <= time.time()  # LED out
    assert next(h for h in get(lab, "/v1/hosts") if h["name"] == empty)["state"] == "ready"
