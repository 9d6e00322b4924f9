"""HA restart with fencing on a real lab (3 hosts, a libvirtd and a BMC (ipmi_sim) each, a manager,
tiny guests): a host killed (its gatekeeper, libvirtd and QEMU, by PID, the BMC not told) is fenced
by the manager through ipmi_sim, its VMs run again on the other hosts, and no VM ever runs on two
hosts (every host's libvirt polled throughout); powered on again, it runs none of them. With its
BMC refusing the password, a killed host is never fenced and nothing of it is restarted; the
password fixed, the next attempt (after its backoff) fences it and its VMs run elsewhere.
One lab for the module; the heartbeat timeout is lowered for it (SOFTUDC_HOST_DOWN_AFTER_S)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.lab import Lab, LabSpec, lab_down, lab_up, load_lab, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get
from softudc.lab.manager import call
from tests.e2e.conftest import _print_logs, _why_not_root, gk, wait_until

pytestmark = [pytest.mark.fencing, pytest.mark.vm]
DOWN_AFTER_S = 8.0  # 4 missed reports (a gatekeeper reports every 2 s)
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: ha}
spec:
  vnets: [{name: net, subnet: 10.7.0.0/24}]
  vms:
    - {name: a, memory: 128Mi, image: test-guest, priority: 5, nics: [{vnet: net, address: pool}]}
    - {name: b, memory: 128Mi, image: test-guest, nics: [{vnet: net, address: pool}]}
"""
MEASURED: list[str] = []


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    reason = _why_not_root()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    if shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None:
        pytest.fail("ipmi_sim or ipmitool is missing: run `make bootstrap` (packages openipmi, ipmitool)")
    state = tempfile.mkdtemp(prefix="sudc")
    before = os.environ.get("SOFTUDC_HOST_DOWN_AFTER_S")
    os.environ["SOFTUDC_HOST_DOWN_AFTER_S"] = str(DOWN_AFTER_S)  # the manager the lab spawns inherits it
    failed_before = request.session.testsfailed
    made = lab_up(LabSpec(name="fe" + secrets.token_hex(3), hosts=3, power="ipmi", vms=True, manager=True), state)
    try:
        yield made
    finally:
        if request.session.testsfailed > failed_before:
            _print_logs(made, lines=300)
        print("\nmeasured: " + ("; ".join(MEASURED) or "nothing"))
        if before is None:
            os.environ.pop("SOFTUDC_HOST_DOWN_AFTER_S", None)
        else:
            os.environ["SOFTUDC_HOST_DOWN_AFTER_S"] = before
        lab_down(made.spec.name, state)
        shutil.rmtree(state, ignore_errors=True)
        assert not [ns for ns in shell.netns_list() if ns.startswith(made.prefix)], "lab down left namespaces"


class Watch:
    """Polls every host's libvirt (through its gatekeeper) until stopped; records any VM seen
    running on two hosts at once. A host that does not answer (killed) counts as running nothing."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.looks = lab, 0
        self.twice: list[dict[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def running(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for h in self.lab.hosts:
            try:
                vms = gk(self.lab, h.name).call("vm.list")
            except Exception:  # a host cut off: its gatekeeper does not answer
                continue
            for vm in vms if isinstance(vms, list) else []:
                if vm.get("state") in ("running", "paused"):
                    out.setdefault(vm["name"], []).append(h.name)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            twice = {vm: hosts for vm, hosts in self.running().items() if len(hosts) > 1}
            if twice:
                self.twice.append(twice)
            self.looks += 1
            self._stop.wait(0.3)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def farm(lab: Lab) -> dict[str, Any]:
    status, body = call(lab, "GET", "/v1/farms/ha")
    assert status == 200 and isinstance(body, dict), body
    return body


def placed(lab: Lab) -> dict[str, str]:
    return {f"ha--{i['name']}": i["host"] for i in farm(lab)["status"]["instances"]}


def host_events(lab: Lab, host: str) -> list[dict[str, Any]]:
    status, events = call(lab, "GET", f"/v1/events?kind=host&name={host}")
    assert status == 200 and isinstance(events, list), events
    return events


def kill_host(lab: Lab, name: str) -> None:
    """A crash: every process of the host's namespace (gatekeeper, libvirtd, QEMU) killed by PID;
    its BMC (in the management namespace) is not told."""
    for pid in shell.netns_pids(lab.host(name).netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: shell.netns_pids(lab.host(name).netns) == [], timeout=10)


def test_a_killed_host_is_fenced_and_its_vms_run_elsewhere_never_twice(lab: Lab) -> None:
    assert call(lab, "PUT", "/v1/farms/ha", FARM)[0] == 200
    assert wait_until(lambda: farm(lab)["status"]["conditions"]["Ready"], timeout=180), farm(lab)["status"]
    where = placed(lab)
    victim = where["ha--a-0"]
    moved = sorted(vm for vm, h in where.items() if h == victim)
    with Watch(lab) as watch:
        t = time.monotonic()
        kill_host(lab, victim)
        assert wait_until(lambda: all(h != victim and vm in watch.running() and watch.running()[vm] == [h]
                                      for vm, h in placed(lab).items()), timeout=90, interval=0.5), \
            (placed(lab), watch.running(), host_events(lab, victim)[-5:], farm(lab)["events"][-12:],
             farm(lab)["status"])
        took = time.monotonic() - t
    assert watch.twice == [], f"a VM ran on two hosts at once: {watch.twice}"
    MEASURED.append(f"kill {victim} -> {', '.join(moved)} running elsewhere in {took:.1f} s "
                    f"(heartbeat timeout {DOWN_AFTER_S:.0f} s; {watch.looks} looks at every host's libvirt)")
    types = [e["type"] for e in host_events(lab, victim)]
    assert "Suspected" in types and "Fenced" in types, types
    fenced = next(e for e in host_events(lab, victim) if e["type"] == "Fenced")
    assert "ipmi 10.99.0.1" in fenced["message"] and "confirmed" in fenced["message"], fenced
    restarted = [e for e in farm(lab)["events"] if e["type"] == "Restarted"]
    assert len(restarted) == len(moved), restarted
    # And they answer over their VNET from another host (on the default eBPF path, a host that
    # joined the VNET for them once had its frames dropped as from a non-member).
    now = placed(lab)
    other = next(h.name for h in lab.hosts if h.name != victim and h.name != now["ha--a-0"])
    ns = add_endpoint(lab, "fee", other, farm(lab)["status"]["vnet_ids"]["net"], "10.7.0.200/24").netns
    addresses = {f"ha--{i['name']}": i["addresses"]["net"] for i in farm(lab)["status"]["instances"]}
    assert wait_until(lambda: all(http_get(ns, f"http://{addresses[vm]}/counter") for vm in moved), timeout=90,
                      interval=1), {vm: now[vm] for vm in moved}
    MEASURED.append(f"kill {victim} -> {', '.join(moved)} answering over the VNET from {other} in "
                    f"{time.monotonic() - t:.1f} s")

    # Powered on again: it rejoins and runs none of the VMs that now run elsewhere.
    with Watch(lab) as watch:
        status, body = call(lab, "POST", f"/v1/hosts/{victim}/power", json.dumps({"action": "on"}))
        assert status == 200, body
        assert wait_until(lambda: any(e["type"] == "Recovered" for e in host_events(lab, victim)), timeout=60), \
            host_events(lab, victim)[-5:]
        assert wait_until(lambda: not [vm for vm in gk(lab, victim).call("vm.list") if vm["name"] in moved],
                          timeout=30), gk(lab, victim).call("vm.list")  # not running, not even defined
        time.sleep(3)
    assert watch.twice == [], f"a VM ran on two hosts at once: {watch.twice}"
    assert {vm: h for vm, h in placed(lab).items()} == {vm: hs[0] for vm, hs in watch.running().items()
                                                        if vm.startswith("ha--")}


def test_with_fencing_failing_nothing_is_restarted_and_an_event_says_why(lab: Lab) -> None:
    where = placed(lab)
    victim = where["ha--b-0"]
    config = load_lab(lab.spec.name, lab.state_dir).host(victim).power or {}
    password = Path(config["password_file"])
    good = password.read_text()
    password.write_text("not-the-password\n")
    try:
        kill_host(lab, victim)
        assert wait_until(lambda: any(e["type"] == "FenceFailed" for e in host_events(lab, victim)),
                          timeout=DOWN_AFTER_S + 90, interval=1), host_events(lab, victim)[-5:]
        failed = next(e for e in host_events(lab, victim) if e["type"] == "FenceFailed")
        assert "the BMC refused the password" in failed["message"], failed
        assert "nothing of it is restarted elsewhere" in failed["message"], failed
        assert placed(lab) == where  # nothing moved
        ran = Watch(lab).running()
        assert not [vm for vm, h in where.items() if h == victim and vm in ran], ran
    finally:
        password.write_text(good)
    # The password fixed: the next attempt (after its backoff) is confirmed and the VMs run elsewhere.
    with Watch(lab) as watch:
        assert wait_until(lambda: all(h != victim and watch.running().get(vm) == [h] for vm, h in placed(lab).items()),
                          timeout=60, interval=0.5), (placed(lab), host_events(lab, victim)[-3:])
    assert watch.twice == [], f"a VM ran on two hosts at once: {watch.twice}"
    assert "attempt 2" in next(e for e in host_events(lab, victim) if e["type"] == "Suspected"
                               and "attempt 2" in e["message"])["message"]
