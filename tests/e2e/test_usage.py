"""Usage accounting on a real lab (issue 15; 2 hosts with libvirtd, a manager, two tiny guests):
each guest burns one vCPU for BURN_S seconds (/cgi-bin/burn), one of them migrating live in the
middle. Each is charged, within TOLERANCE_S, the CPU time its QEMU processes really used over that
time (read from /proc every POLL_S by the test, the source's and the destination's for the one that
moved: nothing counted twice, nothing lost); on a machine with a core free for each burn that is
BURN_S (the figures are printed: on a loaded 2-core machine each burn gets less). `softudc usage -o
json` and the manager's softudc_usage_cpu_seconds_total agree."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from softudc.cli.main import main as cli
from softudc.lab import Lab
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get, wait_for_page
from softudc.lab.manager import call
from softudc.lab.prometheus import query_api, targets
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.metrics, pytest.mark.vm]
BURN_S, TOLERANCE_S, IDLE_S, POLL_S = 60, 3.0, 10.0, 0.25
TICK = os.sysconf("SC_CLK_TCK")
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: us}
spec:
  vnets: [{name: net, subnet: 10.9.0.0/24}]
  vms:
    - {name: a, replicas: 2, memory: 128Mi, image: test-guest,
       migration: {policy: live, maxDowntimeMs: 100}, nics: [{vnet: net, address: pool}]}
"""


def get(lab: Lab, path: str) -> Any:
    status, body = call(lab, "GET", path)
    assert status == 200, (path, body)
    return body


def charged(lab: Lab) -> dict[str, float]:
    """vm -> CPU-seconds the manager charged so far."""
    return {v["vm"]: v["cpu_seconds"] for f in get(lab, "/v1/usage?farm=us")["farms"] for v in f["vms"]}


def placed(lab: Lab) -> dict[str, str]:
    return {f"us--{i['name']}": i["host"] for i in get(lab, "/v1/farms/us")["status"]["instances"]}


def booted(console: Path) -> bool:
    return console.exists() and "GUEST_READY" in console.read_text(errors="replace")


class CpuTruth(threading.Thread):
    """The CPU seconds of each of `vms`' QEMU processes in the lab's host namespaces, read from
    /proc every POLL_S; `cpu` keeps the last value of a process that ended (lost: < POLL_S of it)."""

    def __init__(self, lab: Lab, vms: list[str]) -> None:
        super().__init__(daemon=True)
        self.nets = {os.stat(f"/run/netns/{h.netns}").st_ino for h in lab.hosts}
        self.vms, self.stop, self.lock = vms, threading.Event(), threading.Lock()
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (vm, CPU seconds)
        self.whose: dict[int, str | None] = {}

    def _vm(self, pid: int) -> str | None:
        if pid in self.whose:
            return self.whose[pid]
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            net = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None
        vm = next((v for v in self.vms if f"guest={v}," in args and net in self.nets), None)
        if vm is not None or "libvirt" not in args:  # libvirtd forks, then the child becomes QEMU
            self.whose[pid] = vm
        return vm

    def poll(self) -> None:
        for entry in os.listdir("/proc"):
            vm = self._vm(int(entry)) if entry.isdigit() else None
            if vm is None:
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            with self.lock:
                self.cpu[int(entry)] = (vm, (int(fields[11]) + int(fields[12])) / TICK)

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            self.poll()

    def snapshot(self) -> dict[int, tuple[str, float]]:
        with self.lock:
            return dict(self.cpu)


def used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """vm -> CPU seconds its processes used between two snapshots (a process started since: from 0)."""
    out: dict[str, float] = {}
    for pid, (vm, cpu) in after.items():
        out[vm] = out.get(vm, 0.0) + cpu - before.get(pid, (vm, 0.0))[1]
    return out


def counters(lab: Lab) -> dict[str, float]:
    target = targets(lab)["manager"][0]["targets"][0]
    text = query_api(lab, f"http://{target}/metrics", raw=True)
    out = {}
    for line in text.splitlines():
        if line.startswith("softudc_usage_cpu_seconds_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('vm="')[1].split('"')[0]] = float(value)
    return out


def test_a_burning_guest_is_charged_its_cpu_seconds_also_across_a_migration(
        make_lab: Callable[..., Lab], capsys: pytest.CaptureFixture[str]) -> None:
    lab = make_lab(hosts=2, vms=True, manager=True)
    assert call(lab, "PUT", "/v1/farms/us", FARM)[0] == 200
    assert wait_until(lambda: get(lab, "/v1/farms/us")["status"]["conditions"]["Ready"], timeout=120, interval=1)
    where = placed(lab)
    for vm, h in where.items():  # booted before it moves (one moved in its first second under TCG can panic)
        console = lab.dir / h / "consoles" / f"{vm}.log"
        assert wait_until(functools.partial(booted, console), timeout=120, interval=1), f"{vm} did not boot"
    status = get(lab, "/v1/farms/us")["status"]
    add_endpoint(lab, "adm", where["us--a-0"], status["vnet_ids"]["net"], "10.9.0.200/24")
    ns = lab.endpoints["adm"].netns
    addr = {f"us--{i['name']}": i["addresses"]["net"] for i in status["instances"]}
    for vm, ip in addr.items():
        assert wait_for_page(ns, f"http://{ip}/index.html", timeout=90) == vm

    assert wait_until(lambda: set(charged(lab)) == set(addr), timeout=30, interval=1), charged(lab)
    truth = CpuTruth(lab, sorted(addr))
    truth.start()
    c0, t0 = charged(lab), time.monotonic()
    time.sleep(IDLE_S)
    start, t_start, true0 = charged(lab), time.monotonic(), truth.snapshot()  # idle: a report's lag costs little
    idle = {vm: (start[vm] - c0[vm]) / (t_start - t0) for vm in addr}  # CPU-seconds per second, idle

    for ip in addr.values():
        assert "burning" in http_get(ns, f"http://{ip}/cgi-bin/burn?{BURN_S}")
    time.sleep(BURN_S / 2)
    mover = "us--a-1"
    dest = next(h.name for h in lab.hosts if h.name != where[mover])
    code, body = call(lab, "POST", "/v1/farms/us/instances/a-1/migrate", json.dumps({"to": dest}))
    assert code == 200, body
    assert wait_until(lambda: placed(lab)[mover] == dest, timeout=BURN_S / 2, interval=1), placed(lab)
    time.sleep(max(t_start + BURN_S + 6 - time.monotonic(), 0))  # the burn is over, and two reports later
    end, t_end, really = charged(lab), time.monotonic(), used(true0, truth.snapshot())
    truth.stop.set()
    burnt = {vm: end[vm] - start[vm] - idle[vm] * (t_end - t_start) for vm in addr}
    measured = (f"\nmeasured: over {t_end - t_start:.0f} s with a {BURN_S} s burn: " + ", ".join(
        f"{vm} charged {end[vm] - start[vm]:.1f} s, its QEMU processes used {really[vm]:.1f} s, the burn less idle "
        f"use {burnt[vm]:.1f} s" for vm in sorted(addr)) + f"; {mover} moved")
    for vm in addr:
        assert abs(end[vm] - start[vm] - really[vm]) <= TOLERANCE_S, (vm, end, start, really)

    net_id = status["vnet_ids"]["net"]
    for f in get(lab, "/v1/usage?farm=us")["farms"]:  # the pages and burns went over the VNET: its bytes counted
        for v in f["vms"]:
            row = next(n for n in v["network"] if n["vnet"] == net_id)
            assert row["rx_bytes"] > 0 and row["tx_bytes"] > 0 and v["memory_gib_hours"] > 0, v

    capsys.readouterr()
    cli(["--state-dir", str(lab.state_dir), "usage", "--farm", "us", "-o", "json", "--lab", lab.spec.name])
    shown = {v["vm"]: v["cpu_seconds"] for f in json.loads(capsys.readouterr().out)["farms"] for v in f["vms"]}
    exported = counters(lab)
    assert set(shown) == set(exported) == set(addr)
    for vm in addr:  # read a moment apart: within a report's worth of idle use
        assert abs(shown[vm] - exported[vm]) <= 1.0, (shown, exported)
    with capsys.disabled():
        print(measured)
