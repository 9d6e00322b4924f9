"""Volumes as objects end to end (issue 13 item 3, acceptance items 5 and 7), through the manager's
API only: a gold master made by `POST /v1/volumes`; a farm VM on a clone of it writes; a live
snapshot of that running volume; a standalone clone of the snapshot and a snapshot of that; a
second farm whose VMs clone the first snapshot and the clone's snapshot (a clone of the clone).
Each guest writes its own data into its branch and reads back: every branch holds exactly its own
writes, and a snapshot holds what the guest had written before it (consistency). Then deleting
the farms and the volumes leaves no pool file, export record, daemon or QMP export behind.
One 3-host lab for the module."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.volumes.exports import Exports
from gatekeeper.volumes.pool import Pool
from softudc.lab import Lab, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.guest import http_get
from softudc.lab.manager import call
from softudc.localapi import LocalApiClient, LocalApiError
from tests.e2e.conftest import module_lab, wait_until
from tests.e2e.test_balance import booted

pytestmark = [pytest.mark.volumes, pytest.mark.vm]

MiB = 1 << 20
A_VOL = "vba--a-0--data"
B_VOL, C_VOL = "vbb--b-0--data", "vbb--c-0--data"
FARM_A = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: vba}
spec:
  vnets: [{name: net, subnet: 10.9.8.0/24}]
  vms:
    - {name: a, replicas: 1, memory: 128Mi, image: test-guest, nics: [{vnet: net, address: pool}],
       volumes: [{name: data, size: 64Mi, class: remote, from: gold, keep: true}]}
"""
FARM_B = f"""apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {{name: vbb}}
spec:
  vnets: [{{name: net, subnet: 10.9.9.0/24}}]
  vms:
    - {{name: b, replicas: 1, memory: 128Mi, image: test-guest, nics: [{{vnet: net, address: pool}}],
       volumes: [{{name: data, size: 64Mi, class: remote, from: "{A_VOL}@s1"}}]}}
    - {{name: c, replicas: 1, memory: 128Mi, image: test-guest, nics: [{{vnet: net, address: pool}}],
       volumes: [{{name: data, size: 64Mi, class: remote, from: "br1@s"}}]}}
"""


class World:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.h2 = LocalApiClient(lab.host("h2").api_socket)
        self.hdir = Path(lab.host("h2").config_path).parent
        self.pages: dict[str, tuple[str, str]] = {}  # VM -> (endpoint netns, its address)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = call(self.lab, method, path, body if body is None or isinstance(body, str)
                              else json.dumps(body))
        assert status == 200, (method, path, answer)
        return answer

    def held(self) -> list[str]:
        """h2's pool volumes. volume.list reads each file it globbed: one the converger deletes in
        between makes it fail (requested: Pool.volumes to skip it), so it is asked again."""
        for _ in range(5):
            try:
                return [v["name"] for v in self.h2.call("volume.list")]
            except LocalApiError as e:
                if "no volume" not in str(e) and "No such file" not in str(e):
                    raise
                time.sleep(0.2)
        return [v["name"] for v in self.h2.call("volume.list")]

    def disk(self, vm: str, query: str) -> str:
        ns, ip = self.pages[vm]
        return http_get(ns, f"http://{ip}/cgi-bin/disk?{query}")

    def reads(self, vm: str, expected: str) -> bool:
        return self.disk(vm, "read") == expected

    def write(self, vm: str) -> str:
        """1 MiB of random data at 1 MiB, fsync'd; its md5. The page answers within 2 s or not at
        all (softudc.lab.guest): on a busy host the write may outlast that, so it is done again
        once the last one has had time to end (the read-back checks what the disk holds)."""
        for _ in range(4):
            written = self.disk(vm, "write")
            if written.startswith("written md5="):
                return written.removeprefix("written md5=")
            time.sleep(5)
        raise AssertionError(f"{vm}: /cgi-bin/disk?write did not answer in 4 tries ({written!r})")

    def reached(self, farm: str, vm: str, endpoint: str, ip: str) -> None:
        """Wait for the VM's boot, then reach it from a lab endpoint on its VNET."""
        inst = next(i for i in self.api("GET", f"/v1/farms/{farm}")["status"]["instances"] if i["vm"] == vm)
        console = self.lab.dir / inst["host"] / "consoles" / f"{farm}--{vm}-0.log"
        assert wait_until(functools.partial(booted, console), timeout=150, interval=1), \
            (self.api("GET", "/v1/volumes"), console.read_text(errors="replace")[-2000:] if console.exists() else "")
        if endpoint not in self.lab.endpoints:
            vnet = self.api("GET", f"/v1/farms/{farm}")["status"]["vnet_ids"]["net"]
            add_endpoint(self.lab, endpoint, inst["host"], vnet, ip)
        self.pages[vm] = (self.lab.endpoints[endpoint].netns, inst["addresses"]["net"])

    def export_pids(self) -> dict[str, int]:
        """Each exported volume's daemon."""
        return {name: int(e["pid"]) for name in self.held()
                if (e := self.h2.call("volume.describe", name=name)["export"])}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with module_lab("b", hosts=3, manager=True, vms=True) as lab:
        try:
            yield World(lab)
        finally:
            for farm in ("vba", "vbb"):
                call(lab, "DELETE", f"/v1/farms/{farm}")
            h2 = LocalApiClient(lab.host("h2").api_socket)
            for v in h2.call("volume.list"):  # no daemon outlives the lab, whatever happened
                h2.call("volume.unexport", name=v["name"])


def md5_of_file_region(path: Path, offset: int, length: int) -> str:
    """The md5 of a pool volume's bytes as a guest sees them (qemu-img reads through its chain)."""
    with tempfile.NamedTemporaryFile(prefix="sudb") as raw:
        subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(path), raw.name], check=True,
                       capture_output=True, timeout=60)
        with open(raw.name, "rb") as f:
            f.seek(offset)
            return hashlib.md5(f.read(length)).hexdigest()


def test_snapshot_clone_and_clone_of_the_clone_each_hold_exactly_their_own_writes(world: World) -> None:
    w, t0 = world, time.monotonic()
    w.api("POST", "/v1/volumes", {"name": "gold", "size_bytes": 64 * MiB, "host": "h2", "master": True})
    gold = w.hdir / "pool" / "gold.qcow2"
    assert wait_until(gold.exists, timeout=30, interval=0.5), w.api("GET", "/v1/volumes")
    wrote = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(gold)], capture_output=True,
                           text=True, timeout=30, check=False)
    assert "wrote" in wrote.stdout, wrote.stderr
    head = hashlib.md5(b"\x5a" * MiB).hexdigest()

    w.api("PUT", "/v1/farms/vba", FARM_A)
    w.reached("vba", "a", "vbea", "10.9.8.200/24")
    assert wait_until(lambda: f"head md5={head}" in w.disk("a", "read"), timeout=60, interval=1), w.disk("a", "read")
    w1 = w.write("a")

    pid = w.h2.call("volume.describe", name=A_VOL)["export"]["pid"]
    w.api("POST", f"/v1/volumes/{A_VOL}/snapshots", {"snapshot": "s1"})  # live: the VM goes on writing
    assert wait_until(lambda: f"{A_VOL}.snap.s1" in w.held(), timeout=30, interval=0.5), w.held()
    assert w.h2.call("volume.describe", name=A_VOL)["export"]["pid"] == pid  # the export went on
    w2 = w.write("a")  # after the snapshot: only in A's branch
    assert wait_until(functools.partial(w.reads, "a", f"head md5={head} data md5={w2}"), timeout=30, interval=1)

    w.api("POST", "/v1/volumes", {"name": "br1", "from": f"{A_VOL}@s1"})  # `softudc volume clone`
    assert wait_until(lambda: "br1" in w.held(), timeout=30, interval=0.5), w.held()
    w.api("POST", "/v1/volumes/br1/snapshots", {"snapshot": "s"})
    assert wait_until(lambda: "br1.snap.s" in w.held(), timeout=30, interval=0.5), w.held()
    assert md5_of_file_region(w.hdir / "pool" / "br1.qcow2", MiB, MiB) == w1  # the snapshot: A before s1

    w.api("PUT", "/v1/farms/vbb", FARM_B)  # b: a clone of A@s1; c: a clone of the clone br1@s
    w.reached("vbb", "b", "vbeb", "10.9.9.200/24")
    w.reached("vbb", "c", "vbeb", "10.9.9.200/24")
    for vm in ("b", "c"):  # each sees A as it was at the snapshot: W1, not W2
        assert wait_until(functools.partial(w.reads, vm, f"head md5={head} data md5={w1}"), timeout=60,
                          interval=1), (vm, w.disk(vm, "read"))
    w3, w4 = w.write("b"), w.write("c")
    assert len({w1, w2, w3, w4}) == 4
    for vm, mine in (("a", w2), ("b", w3), ("c", w4)):  # each branch: exactly its own writes
        assert wait_until(functools.partial(w.reads, vm, f"head md5={head} data md5={mine}"), timeout=30,
                          interval=1), (vm, w.disk(vm, "read"))
    assert md5_of_file_region(w.hdir / "pool" / "br1.qcow2", MiB, MiB) == w1  # the standalone clone untouched
    rows = {r["id"]: r for r in w.api("GET", "/v1/volumes")}
    assert rows["gold"]["class"] == "master" and rows[B_VOL]["from"] == f"{A_VOL}@s1"
    assert rows["br1"]["depth"] == 4  # over A@s1 (over gold), plus its own snapshot
    print(f"volume branches: 3 VMs on gold -> {A_VOL}@s1 -> br1@s wrote and read back their own data; "
          f"{time.monotonic() - t0:.0f} s")


def test_deleting_farms_and_volumes_leaves_no_export_file_or_qmp_object(world: World) -> None:
    w, t0 = world, time.monotonic()
    pids = w.export_pids()
    assert {A_VOL, B_VOL, C_VOL} <= set(pids), pids
    status, answer = call(w.lab, "DELETE", "/v1/volumes/br1")
    assert status == 409 and f"{C_VOL} backs on br1 or its snapshots" in str(answer), answer  # refused, saying what
    w.api("DELETE", "/v1/farms/vbb")  # its volumes go (not kept); A's export stays
    assert wait_until(lambda: not {B_VOL, C_VOL} & set(w.held()), timeout=60, interval=1), w.held()
    exports = Exports(Pool(w.hdir / "pool"), w.hdir / "volumes", w.hdir / "nbd", "127.0.0.1")
    for gone in (B_VOL, C_VOL):
        assert not (w.hdir / "pool" / f"{gone}.qcow2").exists() and not exports.exported(gone)
        assert not shell.pid_alive(pids[gone])
    with exports.daemon(A_VOL).qmp() as q:  # the daemon that stays holds its own export, nothing of theirs
        assert [e["id"] for e in q.execute("query-block-exports")] == [A_VOL]
        files = {n["file"] for n in q.execute("query-named-block-nodes")}
        assert not [f for f in files if B_VOL in f or C_VOL in f], files

    w.api("DELETE", "/v1/farms/vba")  # A's volume is kept (keep: true), unexported
    assert wait_until(lambda: not exports.exported(A_VOL), timeout=60, interval=1)
    assert A_VOL in w.held() and not shell.pid_alive(pids[A_VOL])
    w.api("DELETE", "/v1/volumes/br1")  # with its snapshot br1.snap.s
    w.api("DELETE", f"/v1/volumes/{A_VOL}")  # a kept volume no farm wants, through the manager
    w.api("DELETE", "/v1/volumes/gold")  # then A's snapshot goes too (nothing backs on it, its volume gone)
    assert wait_until(lambda: w.held() == [], timeout=90, interval=1), w.held()
    assert list((w.hdir / "pool").glob("*.qcow2")) == []
    assert list((w.hdir / "volumes").glob("*/export.json")) == []
    assert not [p for p in pids.values() if shell.pid_alive(p)]
    assert wait_until(lambda: w.api("GET", "/v1/volumes") == [], timeout=30, interval=1), w.api("GET", "/v1/volumes")
    print(f"volume deletion: farms and volumes gone, nothing left on h2; {time.monotonic() - t0:.0f} s")
