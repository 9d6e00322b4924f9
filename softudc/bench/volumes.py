"""`softudc bench volumes`: the volumes side by side in one run (issue 13 item 6).

clone_ms   a copy-on-write clone of a 1 GiB and of a 1 TiB sparse master, made in a thin pool the
           way the storage service makes one (gatekeeper/volumes/pool.py: `qemu-img create -b`);
           median of CLONES each (target <= 30 ms; the ratio 1TiB/1GiB ~1: the time does not
           grow with the master).
io         in a guest (a lab of 3 hosts with a manager; the VMs on h1), through /cgi-bin/diskrate
           (guest/init: O_DIRECT dd, timed in the guest): `local` (a qcow2 of h1's pool opened by
           its QEMU), `remote` (a clone of a master on h2, over NBD+TLS), `mirrored` (when the
           class exists). seq_mbps: 64 KiB reads of IO_MIB written MiB; seq_write_mbps: writing
           them (fsync); rand_iops: 4 KiB reads at queue depth 1 (one dd: the guest has no fio).
           Ratios to local.
move       the remote guest's volume moved between storage hosts at 10 and 40 MB/s and in adaptive
           mode while the guest reads (vol-move's softudc/bench/volume_move.py); a failure is in
           `notes`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from softudc.lab import Lab, LabSpec, lab_down, lab_up
from softudc.lab.endpoint import add_endpoint
from softudc.lab.manager import call

CLONES = 20
IO_MIB = 48
IOPS_OPS = 2000
TARGET_CLONE_MS = 30.0
GiB, TiB = 1 << 30, 1 << 40
KINDS = {"local": "{name: data, size: 64Mi, class: local}",
         "remote": "{name: data, size: 64Mi, class: remote, from: bmaster}",
         "mirrored": "{name: data, size: 64Mi, class: mirrored}"}
VM = """    - {{name: {kind}, replicas: 1, memory: 128Mi, image: test-guest, nics: [{{vnet: net, address: pool}}],
       volumes: [{volume}]}}
"""
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {{name: bv}}
spec:
  vnets: [{{name: net, subnet: 10.9.9.0/24}}]
  vms:
{vms}"""
_GET = ("import sys, urllib.request\n"
        "try: print(urllib.request.urlopen(sys.argv[1], timeout=120).read().decode().strip())\n"
        "except Exception as e: print('error', e)")


_CLONES = """import json, statistics, sys, time
from pathlib import Path
from gatekeeper.volumes.pool import Pool
pool, clones, out = Pool(Path(sys.argv[1]), thin=True), int(sys.argv[2]), {}
for label, size in (("1GiB", 1 << 30), ("1TiB", 1 << 40)):
    master = "m" + label.lower()
    pool.create(master, size)
    times = []
    for i in range(clones):
        t = time.perf_counter()
        pool.create(f"{master}-c{i}", None, backing=master)
        times.append((time.perf_counter() - t) * 1000)
    out[label] = round(statistics.median(times), 1)
print(json.dumps(out))
"""


def clone_ms(pool_dir: Path, clones: int = CLONES) -> dict[str, float]:
    """Median ms to clone a 1 GiB and a 1 TiB sparse master in a thin pool: the gatekeeper's own
    Pool (gatekeeper/volumes/pool.py), driven in a process of its own (softudc imports no daemon)."""
    done = subprocess.run([sys.executable, "-c", _CLONES, str(pool_dir), str(clones)], capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench volumes: cloning failed: {done.stderr.strip()[-500:]}")
    got: dict[str, float] = json.loads(done.stdout)
    return got


def classes() -> tuple[str, ...]:
    from softudc.model.volume import CLASSES

    return tuple(k for k in KINDS if k in CLASSES)


def farm(kinds: tuple[str, ...]) -> str:
    return FARM.format(vms="".join(VM.format(kind=k, volume=KINDS[k]) for k in kinds))


def parse(text: str) -> dict[str, int]:
    """'bytes=33554432 ms=410' -> {'bytes': 33554432, 'ms': 410}; ValueError with the text."""
    try:
        return {k: int(v) for k, v in (p.split("=", 1) for p in text.split())}
    except ValueError:
        raise ValueError(f"the guest's diskrate said {text!r}") from None


def rates(get: Callable[[str], str]) -> dict[str, float]:
    """One guest's disk: write IO_MIB, read them back, then 4 KiB reads (`get`: a diskrate query)."""
    w = parse(get(f"write={IO_MIB}"))
    r = parse(get(f"read={IO_MIB}"))
    o = parse(get(f"iops={IOPS_OPS}"))
    return {"seq_mbps": round(r["bytes"] / max(r["ms"], 10) / 1000, 1),
            "seq_write_mbps": round(w["bytes"] / max(w["ms"], 10) / 1000, 1),
            "rand_iops": round(o["ops"] / max(o["ms"], 10) * 1000)}


def ratios(io: dict[str, Any]) -> dict[str, Any]:
    local = io.get("local")
    out: dict[str, Any] = {}
    for kind, r in io.items():
        if kind == "local" or not r or not local:
            continue
        out[kind] = {k: round(r[k] / local[k], 2) if local[k] else None for k in ("seq_mbps", "rand_iops")}
    return out


def _api(lab: Lab, method: str, path: str, body: str | None = None) -> Any:
    status, answer = call(lab, method, path, body)
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {answer}")
    return answer


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench volumes: {what} within {timeout:.0f} s")
        time.sleep(1)


def _boot(lab: Lab, kinds: tuple[str, ...]) -> Callable[[str], bool]:
    """The farm of one VM per kind on h1 (the remote clone on h2, its master's host); waits for
    the guests (at most 240 s); whether each booted."""
    from softudc.localapi import LocalApiClient

    LocalApiClient(lab.host("h2").api_socket).call("volume.create", name="bmaster", size_bytes=64 << 20)
    for h in ("h2", "h3"):
        _api(lab, "PUT", f"/v1/hosts/{h}/state", json.dumps({"state": "maintenance"}))
    _api(lab, "PUT", "/v1/farms/bv", farm(kinds))
    _wait("the VMs placed on h1", lambda: {i["host"] for i in _insts(lab).values()} == {"h1"}
          and len(_insts(lab)) == len(kinds), 60)
    for h in ("h2", "h3"):  # a mirrored volume's replicas go to other hosts
        _api(lab, "PUT", f"/v1/hosts/{h}/state", json.dumps({"state": "ready"}))

    def booted(kind: str) -> bool:
        console = lab.dir / "h1" / "consoles" / f"bv--{kind}-0.log"
        return console.exists() and "GUEST_READY" in console.read_text(errors="replace")

    try:
        _wait("the guests booted", lambda: all(booted(k) for k in kinds), 240)
    except RuntimeError:
        if not any(booted(k) for k in kinds):
            raise
    return booted


def _insts(lab: Lab) -> dict[str, dict[str, Any]]:
    return {i["vm"]: i for i in _api(lab, "GET", "/v1/farms/bv")["status"]["instances"]}


def _diskrate(ns: str, ip: str) -> Callable[[str], str]:
    def get(query: str) -> str:
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _GET,
                               f"http://{ip}/cgi-bin/diskrate?{query}"], capture_output=True, text=True,
                              timeout=180, check=False)
        return done.stdout.strip()
    return get


def guest_io(lab: Lab, kinds: tuple[str, ...], notes: list[str]) -> dict[str, dict[str, float] | None]:
    """Boot one VM per kind on h1, measure each guest's disk (one after the other); a kind whose
    guest did not boot is None, said in `notes`."""
    booted = _boot(lab, kinds)
    add_endpoint(lab, "bva", "h1", _api(lab, "GET", "/v1/farms/bv")["status"]["vnet_ids"]["net"], "10.9.9.200/24")
    ns = lab.endpoints["bva"].netns
    out: dict[str, dict[str, float] | None] = {}
    for kind in kinds:
        if not booted(kind):
            out[kind] = None
            notes.append(f"io.{kind}: null: its guest did not boot within 240 s ({_api(lab, 'GET', '/v1/volumes')})")
            continue
        get = _diskrate(ns, _insts(lab)[kind]["addresses"]["net"])
        _wait(f"{kind}'s guest answering", lambda get=get: "usage" in get("help"), 60)  # type: ignore[misc]
        out[kind] = rates(get)
        print(f"bench volumes: {kind} {out[kind]}", file=sys.stderr)
    return out


MOVES: tuple[dict[str, Any], ...] = ({"limit_mbps": 10}, {"limit_mbps": 40}, {"adaptive": True})


def _moves(lab: Lab, notes: list[str]) -> list[dict[str, Any]] | None:
    """The remote VM's volume moved h2 -> h3 -> h2 ... at each of MOVES while the guest reads
    (vol-move's softudc/bench/volume_move.py move_once); a move that fails ends the series, said."""
    from softudc.bench.volume_move import move_once

    get = _diskrate(lab.endpoints["bva"].netns, _insts(lab)["remote"]["addresses"]["net"])
    out: list[dict[str, Any]] = []
    for i, how in enumerate(MOVES):
        to = ("h3", "h2")[i % 2]
        try:
            out.append({"to": to, **move_once(lab, "bv--remote-0--data", to, get, **how)})
        except RuntimeError as e:
            notes.append(f"move to {to} {how}: {e}")
            break
        print(f"bench volumes: move {out[-1]}", file=sys.stderr)
    return out or None


def run_volumes(state_dir: str | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("softudc bench volumes needs root (a lab of network namespaces and guests)")
    state = state_dir or tempfile.mkdtemp(prefix="sudbv")
    kinds = classes()
    notes: list[str] = []
    try:
        t = time.monotonic()
        clones = clone_ms(Path(state) / "clone-pool")
        print(f"bench volumes: clone_ms {clones} ({time.monotonic() - t:.1f} s)", file=sys.stderr)
        lab = lab_up(LabSpec("bv" + secrets.token_hex(3), hosts=3, manager=True, vms=True), state)
        try:
            io: dict[str, Any] = guest_io(lab, kinds, notes)
            moves = _moves(lab, notes) if io.get("remote") else None
        finally:
            call(lab, "DELETE", "/v1/farms/bv")
            lab_down(lab.spec.name, state)
    finally:
        if state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
    if "mirrored" not in kinds:
        io["mirrored"] = None
        notes.append("io.mirrored: null: the class `mirrored` is not in this version's descriptor (vol-mirror)")
    return {"benchmark": "volumes", "accel": lab.accel, "clone_ms": clones,
            "clone_ratio_1TiB_to_1GiB": round(clones["1TiB"] / clones["1GiB"], 2) if clones["1GiB"] else None,
            "clone_target_ms": TARGET_CLONE_MS, "io": io, "io_ratio_to_local": ratios(io),
            "io_method": f"in the guest: {IO_MIB} MiB written (fsync) then read, 64 KiB O_DIRECT; {IOPS_OPS} reads "
                         "of 4 KiB O_DIRECT at queue depth 1",
            "move": moves, "notes": notes}


def print_volumes(result: dict[str, Any]) -> None:
    print(f"clone_ms {result['clone_ms']} (target <= {result['clone_target_ms']:g} ms; "
          f"1TiB/1GiB {result['clone_ratio_1TiB_to_1GiB']})")
    for kind, r in result["io"].items():
        print(f"{kind:9} {r}  ratio to local: {result['io_ratio_to_local'].get(kind, '-')}")
    for note in result["notes"]:
        print(note)
