"""One VM, one host, with real gatekeepers, libvirt and QEMU (audit R5, R13, R20, R27): a managed
VM started on a host the manager did not choose is reported and stopped there, never adopted; a
cold move through the manager stops the VM gracefully and starts it on the destination only once
the source has said it holds no such domain, never running it twice; the migration URI handed to
the source is the one the manager built; a VM that crashes on arrival is started again there."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from softudc.lab import Lab
from softudc.lab.libvirt import libvirt_uri
from softudc.lab.manager import call
from softudc.localapi import LocalApiClient, LocalApiError
from tests.e2e.conftest import gk, wait_until

pytestmark = [pytest.mark.manager, pytest.mark.vm]
DEMO = (Path(__file__).parents[2] / "configs" / "farms" / "demo.yaml").read_text()
COLD = DEMO.replace("migration: {policy: live, maxDowntimeMs: 50}", "migration: {policy: cold}")


def farm(lab: Lab) -> dict[str, Any]:
    status, body = call(lab, "GET", "/v1/farms/demo")
    assert status == 200 and isinstance(body, dict), body
    return body


def where_runs(lab: Lab, vm: str) -> list[str]:
    return [h.name for h in lab.hosts for d in gk(lab, h.name).call("vm.list")
            if d["name"] == vm and d["state"] == "running"]


@pytest.mark.adversarial
def test_r5_r13_r27_a_stray_copy_is_stopped_not_adopted_and_a_cold_move_never_runs_the_vm_twice(
        make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=3, vms=True, manager=True)
    assert call(lab, "PUT", "/v1/farms/demo", COLD)[0] == 200
    assert wait_until(lambda: farm(lab)["status"]["conditions"]["Ready"], timeout=120), farm(lab)["status"]
    home = next(i["host"] for i in farm(lab)["status"]["instances"] if i["name"] == "db-0")
    stray = next(h.name for h in lab.hosts if h.name != home)
    back = farm(lab)["status"]["vnet_ids"]["back"]

    # R5: a copy of demo--db-0 appears on another host (started there behind the manager's back).
    # Its gatekeeper may destroy the copy before the start even returns (an error), or libvirt may
    # hold the start while the destroy has the domain (CI saw it outlast the 10 s client timeout):
    # either way the notes below tell.
    with contextlib.suppress(LocalApiError, TimeoutError):
        LocalApiClient(lab.host(stray).api_socket, timeout=60).call(
            "vm.start", name="demo--db-0", nics=[], vcpus=1, memory_mib=128)
    # Its gatekeeper destroys it (never told to run it) and says so in its report; if a report
    # listed it running first, the manager also says it was not adopted.
    assert wait_until(lambda: where_runs(lab, "demo--db-0") == [home], timeout=30)  # the stray copy is stopped

    def noted_on_stray() -> bool:
        hosts = call(lab, "GET", "/v1/hosts")[1]
        return isinstance(hosts, list) and any("demo--db-0 ran here" in n for h in hosts if h["name"] == stray
                                               for n in h.get("notes", []))

    assert wait_until(noted_on_stray, timeout=30)
    assert next(i for i in farm(lab)["status"]["instances"] if i["name"] == "db-0")["host"] == home
    assert back not in [v["vnet"] for v in gk(lab, stray).call("vnet.list")]  # and got no VNET (no keys)
    assert all(f"on {stray}" in e["message"] and "not adopted" in e["message"]
               for e in farm(lab)["events"] if e["type"] == "UnexpectedVM")

    # R13/R27: a cold move; sampled all along, the VM never runs on two hosts.
    status, body = call(lab, "POST", "/v1/farms/demo/instances/db-0/migrate", json.dumps({"to": stray}))
    assert status == 200, body
    seen: list[list[str]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        seen.append(where_runs(lab, "demo--db-0"))
        db = next(i for i in farm(lab)["status"]["instances"] if i["name"] == "db-0")
        if "migrating" not in db and seen[-1] == [stray]:
            break
        time.sleep(0.5)
    assert seen[-1] == [stray], seen[-10:]
    assert all(len(s) <= 1 for s in seen), "the VM ran on two hosts at once"
    types = [e["type"] for e in farm(lab)["events"]]
    assert "Migrated" in types and "MigrationFailed" not in types
    assert call(lab, "DELETE", "/v1/farms/demo")[0] == 200
    assert wait_until(lambda: not any(gk(lab, h.name).call("vm.list") for h in lab.hosts), timeout=90)


def test_r20_the_source_is_handed_the_uri_the_manager_built(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=2, vms=True, manager=True)
    assert call(lab, "PUT", "/v1/farms/demo", DEMO.replace("replicas: 3", "replicas: 1"))[0] == 200
    assert wait_until(lambda: farm(lab)["status"]["conditions"]["Ready"], timeout=120), farm(lab)["status"]
    home = next(i["host"] for i in farm(lab)["status"]["instances"] if i["name"] == "db-0")
    dest = next(h for h in lab.hosts if h.name != home)
    # Migrate a booted guest: one moved in its first second under TCG can panic on arrival (seen:
    # in hpet_enable, in profile_tick), which says nothing about the URI.
    console = lab.dir / home / "consoles" / "demo--db-0.log"
    assert wait_until(lambda: console.exists() and "GUEST_READY" in console.read_text(errors="replace"),
                      timeout=120), "db-0 did not boot"
    status, body = call(lab, "POST", "/v1/farms/demo/instances/db-0/migrate", json.dumps({"to": dest.name}))
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["instance"]["migrating"]["uri"] == f"qemu+tcp://{dest.mgmt_ip}/system"
    assert wait_until(lambda: where_runs(lab, "demo--db-0") == [dest.name] and
                      "migrating" not in next(i for i in farm(lab)["status"]["instances"] if i["name"] == "db-0"),
                      timeout=120), farm(lab)["events"][-5:]

    # It crashes on arrival (as a guest under TCG can: a panic in its first ticks there, and
    # on_crash destroys it): back home, destroyed the moment the migration is over (it runs at
    # home and its source has undefined it; earlier, a destroy races libvirt's last phase and the
    # move simply fails). Home holds it shut off. If home's report showed it running first, it
    # arrived and home restarts a VM it should run; if not (the case CI saw), the manager makes
    # the instance home's on home's word that it holds it stopped, and home starts it again.
    crashed = threading.Event()
    stop = threading.Event()

    def crash_on_arrival() -> None:
        conn, source = libvirt.open(libvirt_uri(lab, lab.host(home))), libvirt.open(libvirt_uri(lab, dest))
        try:
            while not stop.is_set():
                with contextlib.suppress(libvirt.libvirtError):  # a domain that went while listed
                    runs = [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)]
                    if "demo--db-0" in runs and "demo--db-0" not in [d.name() for d in source.listAllDomains()]:
                        conn.lookupByName("demo--db-0").destroy()
                        crashed.set()
                        return
                time.sleep(0.005)
        finally:
            conn.close()
            source.close()

    crasher = threading.Thread(target=crash_on_arrival, daemon=True)
    crasher.start()
    before = len(farm(lab)["events"])
    try:
        status, body = call(lab, "POST", "/v1/farms/demo/instances/db-0/migrate", json.dumps({"to": home}))
        assert status == 200, body
        assert crashed.wait(120), "db-0 never ran at home"
    finally:
        stop.set()
        crasher.join(5)
    assert wait_until(lambda: where_runs(lab, "demo--db-0") == [home] and
                      "migrating" not in next(i for i in farm(lab)["status"]["instances"] if i["name"] == "db-0"),
                      timeout=120), farm(lab)["events"][-5:]
    events = farm(lab)["events"][before:]
    said = [e["message"] for e in events if e["type"] == "Migrated"]
    assert said and not [e for e in events if e["type"] == "MigrationFailed"], events
    # Its report may have shown it running before the crash (then it arrived, and home restarts a
    # VM it should run): either way it runs there again. Which one this run saw:
    print(f"\ncrashed on arrival: {said[-1]}")
