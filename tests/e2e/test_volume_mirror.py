"""Acceptance 3 of issue 13: a `mirrored` volume survives the loss of a replica's host.

A farm VM on h1 with a 16 MiB mirrored volume whose replicas the manager puts on h2 and h3; h1's
gatekeeper joins them in a quorum daemon (gatekeeper/volumes/mirror.py) the VM opens over a unix
socket. The guest writes (guest/init /cgi-bin/disk); h3 is killed (every process of its namespace,
qemu-storage-daemons included, by PID); the guest reads its data back and writes again; the manager
places a third replica (on h1, the only other live host) and h1's daemon rebuilds it from the
surviving one and swaps it in: `softudc volume describe` says healthy again, the two replicas'
files hold the same data, and the guest reads back what it wrote last. One lab (3 hosts, manager).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softudc.lab import Lab, libvirt, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get
from softudc.lab.manager import call
from tests.e2e.conftest import module_lab, wait_until
from tests.e2e.test_balance import booted

pytestmark = [pytest.mark.volumes, pytest.mark.vm]

FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: mf}
spec:
  vnets: [{name: net, subnet: 10.9.8.0/24}]
  vms:
    - {name: d, replicas: 1, memory: 128Mi, image: test-guest,
       nics: [{vnet: net, address: pool}],
       volumes: [{name: data, size: 16Mi, class: mirrored}]}
"""
VID = "mf--d-0--data"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with module_lab("m", hosts=3, manager=True, vms=True) as made:
        yield made


def api(lab: Lab, method: str, path: str, body: Any = None) -> Any:
    status, answer = call(lab, method, path, body if body is None or isinstance(body, str) else json.dumps(body))
    assert status == 200, (method, path, answer)
    return answer


def volume(lab: Lab) -> dict[str, Any]:
    v: dict[str, Any] = api(lab, "GET", f"/v1/volumes/{VID}")
    return v


def kill_host(lab: Lab, name: str) -> None:
    """A crash: every process of the host's namespace (gatekeeper, libvirtd, its qsds) killed by PID."""
    for pid in shell.netns_pids(lab.host(name).netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: shell.netns_pids(lab.host(name).netns) == [], timeout=10)


def same_files(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(a), str(b)],
                          capture_output=True, text=True, timeout=30, check=False)


def test_a_mirrored_volume_survives_a_replica_host_and_is_rebuilt(lab: Lab) -> None:
    t0 = time.monotonic()
    for h in ("h2", "h3"):  # the VM goes to h1, the replicas to the others
        api(lab, "PUT", f"/v1/hosts/{h}/state", {"state": "maintenance"})
    api(lab, "PUT", "/v1/farms/mf", FARM)
    assert wait_until(lambda: api(lab, "GET", "/v1/farms/mf")["status"]["instances"][0]["host"] == "h1",
                      timeout=30, interval=0.5)
    for h in ("h2", "h3"):
        api(lab, "PUT", f"/v1/hosts/{h}/state", {"state": "ready"})
    console = lab.dir / "h1" / "consoles" / "mf--d-0.log"
    assert wait_until(functools.partial(booted, console), timeout=150, interval=1), (volume(lab), _tail(lab, "h1"))
    v = volume(lab)
    assert v["class"] == "mirrored" and sorted(r["host"] for r in v["replicas"]) == ["h2", "h3"], v
    assert wait_until(lambda: volume(lab)["state"] == "healthy", timeout=30, interval=1), volume(lab)
    xml = subprocess.run(["virsh", "-c", libvirt.libvirt_uri(lab, lab.host("h1")), "dumpxml", "mf--d-0"],
                         capture_output=True, text=True, timeout=30, check=False).stdout
    assert f"<source protocol='nbd' name='{VID}' tls='no'" in xml and "transport='unix'" in xml, xml

    inst = api(lab, "GET", "/v1/farms/mf")["status"]
    add_endpoint(lab, "mira", "h1", inst["vnet_ids"]["net"], "10.9.8.200/24")
    ns, ip = lab.endpoints["mira"].netns, inst["instances"][0]["addresses"]["net"]

    def page(q: str) -> str:
        return http_get(ns, f"http://{ip}/cgi-bin/disk?{q}")

    assert wait_until(lambda: page("read").startswith("head md5="), timeout=60, interval=1), page("read")
    first = page("write").removeprefix("written md5=")
    r1 = next(r for r in v["replicas"] if r["host"] == "h2")["name"]
    r2 = next(r for r in v["replicas"] if r["host"] == "h3")["name"]
    assert same_files(lab.dir / "h2" / "pool" / f"{r1}.qcow2", lab.dir / "h3" / "pool" / f"{r2}.qcow2").returncode == 0

    t_kill = time.monotonic()
    kill_host(lab, "h3")
    assert page("read").endswith(f"data md5={first}")  # reads survive the loss
    again = page("write")
    assert again.startswith("written md5="), again  # and so do writes
    second = again.removeprefix("written md5=")
    assert wait_until(lambda: volume(lab)["state"] in ("degraded", "rebuilding"), timeout=30, interval=0.5)
    seen_s = time.monotonic() - t_kill
    steps: list[str] = []

    def healthy() -> bool:  # the states on the way, for the log
        now = volume(lab)
        step = now["state"] + " " + ",".join(f"{r['name'][-2:]}@{r['host']}:{r['state']}" for r in now["replicas"])
        if not steps or not steps[-1].endswith(step):
            steps.append(f"{time.monotonic() - t_kill:.1f}s {step}")
        return bool(now["state"] == "healthy")

    assert wait_until(healthy, timeout=90, interval=0.5), (steps, _tail(lab, "h1"))
    print("mirrored volume after the kill:", "; ".join(steps))
    healed_s = time.monotonic() - t_kill
    v = volume(lab)
    hosts = {r["host"]: r["name"] for r in v["replicas"]}
    assert sorted(hosts) == ["h1", "h2"] and hosts["h2"] == r1, v  # the new replica on the only other live host
    assert page("read").endswith(f"data md5={second}")
    rebuilt = same_files(lab.dir / "h2" / "pool" / f"{r1}.qcow2", lab.dir / "h1" / "pool" / f"{hosts['h1']}.qcow2")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    print(f"mirrored volume: h3 killed, the manager saw it degraded after {seen_s:.1f} s, healthy again (rebuilt "
          f"on h1) after {healed_s:.1f} s; "
          f"{time.monotonic() - t0:.0f} s in all")


def _tail(lab: Lab, host: str) -> str:
    log = lab.dir / host / "gatekeeper.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else f"(no {log})"
