"""`softudc bench manager`: a real `softudc manager` daemon process against N simulated gatekeepers
(softudc/bench/hostsim.py: asyncio, real mutual TLS with certificates from the manager's CA, each
host joined in the store), for each store backend (SQLite; etcd: a 3-member cluster on loopback).

Per backend and N, in phases (progress on stderr):
  ramp     the hosts connect (spread over up to 10 s) and make their first round
  steady   `seconds` long: every host reports every INTERVAL_S and long-polls its desired state
           (one round: PUT report, GET desired?wait=INTERVAL_S, as gatekeeper/reconciler.py does);
           one admin client lists farms twice and applies a small farm (1 or 2 VMs in turn) each
           ADMIN_PERIOD_S. Measured: admin and report latencies, the daemon's CPU (/proc/PID/stat)
           and RSS, the client processes' CPU
  apply    a farm of `vms` VMs (1 vCPU, 64 MiB; VM_GROUPS VNETs) is applied; apply_to_all_s is the
           time from the PUT until every host with instances of it had a long poll return all of them

The daemon and the clients share the machine's cores: the JSON says how many client processes ran
and what they cost, so a reader can tell the manager's share.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import os
import platform
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from softudc.bench.certs import host_certificates

HOST_COUNTS = (100, 1000, 5000)
BACKENDS = ("sqlite", "etcd")
INTERVAL_S = 2.0  # a gatekeeper's default ([manager] interval)
ADMIN_PERIOD_S = 1.0  # per period: two GET /v1/farms and one PUT /v1/farms/admin
ADMIN_TIMEOUT_S = 15.0  # an admin call still unanswered then counts as failed (a saturated manager
# would otherwise hold the steady window open for minutes)
VM_GROUPS = 4  # the big farm's VMs in this many groups, each on its own VNET
BIG, SMALL = "big", "admin"
HOST_VCPUS, HOST_MEMORY_MIB = 64, 256 * 1024  # each host's capacity (more vCPUs when the farm would not fit)
TARGETS = {"hosts": 5000, "admin_p99_ms": 100, "report_p99_ms": 200, "rss_mib": 1024, "apply_to_all_s": 5}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _say(text: str) -> None:
    print(f"[bench manager] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard one (the daemon and clients inherit it): thousands of
    connections need a descriptor each on both sides."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def farm_yaml(name: str, vms: int, groups: int, subnet_base: str) -> str:
    """A farm of `vms` VMs of 1 vCPU and 64 MiB, in `groups` groups, each on its own VNET."""
    base = ipaddress.IPv4Address(subnet_base)
    sizes = [vms // groups + (1 if g < vms % groups else 0) for g in range(groups)]
    vnets = "".join(f"    - {{name: v{g}, subnet: {base + g * 1024}/22}}\n" for g in range(groups))
    groups_yaml = "".join(f"    - {{name: g{g}, replicas: {n}, vcpus: 1, memory: 64Mi, image: test-guest, "
                          f"nics: [{{vnet: v{g}}}]}}\n" for g, n in enumerate(sizes) if n)
    return (f"apiVersion: softudc.io/v1alpha1\nkind: Farm\nmetadata: {{name: {name}}}\nspec:\n"
            f"  vnets:\n{vnets}  vms:\n{groups_yaml}")


@dataclass
class Worker:
    """A hostsim process and what its stdout said."""

    proc: subprocess.Popen[str]
    ready: int = 0
    errors: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, out: IO[str]) -> None:
        for line in out:
            msg = json.loads(line)
            with self.lock:
                if "ready" in msg:
                    self.ready, self.errors = int(msg["ready"]), int(msg["errors"])
                elif "host" in msg:
                    self.events.append(msg)
                else:
                    self.results.append(msg)


def start_workers(config: dict[str, Any], hosts: list[dict[str, str]], count: int) -> list[Worker]:
    workers = []
    for i in range(count):
        proc = subprocess.Popen([sys.executable, "-m", "softudc.bench.hostsim"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        w = Worker(proc)
        assert proc.stdout is not None
        threading.Thread(target=w.read, args=(proc.stdout,), name=f"hostsim-{i}", daemon=True).start()
        w.send(json.dumps({**config, "hosts": hosts[i::count]}))
        workers.append(w)
    return workers


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM by PID, then SIGKILL if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Daemon:
    """`softudc manager` as a child process, on a free loopback port."""

    def __init__(self, base: Path, store_url: str | None) -> None:
        self.port = free_port()
        self.log = base / "manager.log"
        argv = [sys.executable, "-m", "softudc.cli", "--state-dir", str(base), "manager",
                "--listen", f"127.0.0.1:{self.port}"]
        if store_url:
            argv += ["--store", store_url]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.rss_max = 0.0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def wait_ready(self, admin: httpx.Client, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the manager daemon exited ({self.proc.returncode}): {self.tail()}")
            try:
                if admin.get("/v1/farms").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the manager daemon did not answer within {timeout:.0f} s: {self.tail()}")
            time.sleep(0.2)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.rss_max = max(self.rss_max, rss_mib(self.proc.pid))
            except OSError:
                return

    def peak_rss(self) -> float:
        """The kernel's high-water mark of its RSS (VmHWM), or the sampled maximum."""
        try:
            return round(max(self.rss_max, rss_mib(self.proc.pid, "VmHWM")), 1)
        except OSError:
            return round(self.rss_max, 1)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        self._stop.set()
        stop_process(self.proc)


def seed_hosts(store_url: str, state: Path, certs: dict[str, tuple[Path, str]]) -> None:
    """Each host joined, as a join leaves it: its certificate's fingerprint stored."""
    from softudc.manager.storeurl import open_store

    store = open_store(store_url, state)
    try:
        now = time.time()
        for name, (_, fp) in certs.items():
            store.put("host", name, {"joined": now, "certificate": fp})
    finally:
        store.close()


def daemon_takes_store() -> bool:
    """Whether this version's `softudc manager` has --store (issue 11)."""
    out = subprocess.run([sys.executable, "-m", "softudc.cli", "manager", "--help"], capture_output=True, text=True,
                         timeout=60)
    return "--store" in out.stdout


@dataclass
class Admin:
    """The admin client's latencies in the steady window."""

    gets: list[float] = field(default_factory=list)
    puts: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def call(self, http: httpx.Client, method: str, path: str, into: list[float],
             body: str = "") -> httpx.Response | None:
        start = time.perf_counter()
        try:
            r = http.request(method, path, content=body.encode() if body else None, timeout=ADMIN_TIMEOUT_S)
        except httpx.HTTPError as e:  # cut off or timed out: counted, with the time it took to fail
            into.append((time.perf_counter() - start) * 1000)
            self.failures.append(f"{method} {path}: {type(e).__name__}: {e}")
            return None
        into.append((time.perf_counter() - start) * 1000)
        if r.status_code != 200:
            self.failures.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
        return r

    def steady(self, http: httpx.Client, seconds: float) -> None:
        end, replicas = time.monotonic() + seconds, 1
        while time.monotonic() < end:
            period = time.monotonic() + ADMIN_PERIOD_S
            self.call(http, "GET", "/v1/farms", self.gets)
            replicas = 3 - replicas
            self.call(http, "PUT", f"/v1/farms/{SMALL}", self.puts, farm_yaml(SMALL, replicas, 1, "10.200.0.0"))
            self.call(http, "GET", "/v1/farms", self.gets)
            time.sleep(max(period - time.monotonic(), 0.0))


def wait_ramp(workers: list[Worker], n: int, daemon: Daemon, timeout: float) -> float:
    start = time.monotonic()
    last = -1.0
    while True:
        ready, errors = sum(w.ready for w in workers), sum(w.errors for w in workers)
        if ready >= n:
            return time.monotonic() - start
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the manager daemon exited during the ramp: {daemon.tail()}")
        if time.monotonic() - start > timeout:
            if ready == 0:
                raise RuntimeError(f"no host made a round within {timeout:.0f} s ({errors} errors)")
            _say(f"  ramp: only {ready} of {n} hosts made a round within {timeout:.0f} s ({errors} errors); "
                 "measuring what there is (hosts_ready says how many)")
            return time.monotonic() - start
        if time.monotonic() - last >= 5:
            _say(f"  ramp: {ready}/{n} hosts made a round, {errors} errors")
            last = time.monotonic()
        time.sleep(0.2)


def collect(workers: list[Worker], timeout: float = 60.0) -> list[dict[str, Any]]:
    for w in workers:
        with w.lock:
            w.results.clear()
        w.send("collect")
    deadline = time.monotonic() + timeout
    while any(not w.results for w in workers):
        if time.monotonic() > deadline:
            raise RuntimeError("the simulated hosts did not hand in their measurements")
        time.sleep(0.1)
    return [w.results[0] for w in workers]


def apply_to_all(http: httpx.Client, workers: list[Worker], vms: int, timeout: float) -> dict[str, Any]:
    """Apply the big farm; seconds until every host with instances of it was told all of them."""
    t0 = time.time()
    r = http.put(f"/v1/farms/{BIG}", content=farm_yaml(BIG, vms, VM_GROUPS, "10.100.0.0").encode(), timeout=timeout)
    answered = time.time() - t0
    if r.status_code != 200:
        raise RuntimeError(f"applying {BIG} ({vms} VMs): {r.status_code} {r.text[:300]}")
    expected: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instances = http.get(f"/v1/farms/{BIG}").json().get("status", {}).get("instances", [])
        expected = collections.Counter(str(i["host"]) for i in instances if i.get("host"))
        if sum(expected.values()) >= vms:
            break
        time.sleep(0.2)
    done: dict[str, float] = {}
    while time.monotonic() < deadline and len(done) < len(expected):
        for w in workers:
            with w.lock:
                events = list(w.events)
            for e in events:
                if e["host"] in expected and e["vms"] == expected[e["host"]] and e["host"] not in done:
                    done[e["host"]] = float(e["t"])
        time.sleep(0.1)
    complete = len(done) == len(expected) and sum(expected.values()) >= vms
    return {"apply_vms": vms, "apply_placed": sum(expected.values()), "apply_hosts": len(expected),
            "apply_answer_s": round(answered, 3),
            "apply_to_all_s": round(max(done.values()) - t0, 3) if complete and done else None,
            "apply_hosts_told": len(done)}


def _steady(http: httpx.Client, workers: list[Worker], daemon: Daemon, seconds: float,
            others: dict[str, list[int]]) -> dict[str, Any]:
    """The steady window: admin calls from here, reports from the workers, CPU of every process."""
    pids = {"manager": [daemon.proc.pid], "clients": [w.proc.pid for w in workers], **others}
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    for w in workers:
        w.send("measure")
    start = time.monotonic()
    admin = Admin()
    admin.steady(http, seconds)
    wall = time.monotonic() - start
    after = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    results = collect(workers)
    reports = [x for r in results for x in r["latencies_ms"]]
    both = admin.gets + admin.puts
    out: dict[str, Any] = {
        "admin_p50_ms": percentile(both, 0.5), "admin_p99_ms": percentile(both, 0.99),
        "admin_get_p50_ms": percentile(admin.gets, 0.5), "admin_get_p99_ms": percentile(admin.gets, 0.99),
        "admin_put_p50_ms": percentile(admin.puts, 0.5), "admin_put_p99_ms": percentile(admin.puts, 0.99),
        "admin_calls": len(both), "admin_failed": len(admin.failures), "admin_failures": admin.failures[:5],
        "report_p50_ms": percentile(reports, 0.5), "report_p99_ms": percentile(reports, 0.99),
        "reports": len(reports), "reports_per_s": round(len(reports) / wall, 1),
        "polls": sum(int(r["polls"]) for r in results),
        "client_errors": sum(int(r["errors"]) for r in results),
        "client_last_error": next((r["last_error"] for r in results if r["last_error"]), ""),
        "steady_s": round(wall, 1)}
    for k in pids:
        out[f"{k}_cpu_pct" if k != "manager" else "cpu_pct"] = round((after[k] - before[k]) / wall * 100, 1)
    return out


def _one(backend: str, n: int, seconds: float, vms: int) -> dict[str, Any]:
    from softudc.etcd.cluster import EtcdCluster
    from softudc.manager.service import init
    from softudc.pki import CertificateAuthority

    with tempfile.TemporaryDirectory(prefix="sudc-bench-mgr") as d:
        base = Path(d)
        state = base / "manager"
        token = init(state, ["127.0.0.1"])
        cluster = EtcdCluster.start(base / "etcd", members=3) if backend == "etcd" else None
        try:
            url = cluster.url if cluster else f"sqlite://{state / 'state.db'}"
            _say(f"{backend}, {n} hosts: certificates and joins")
            names = [f"h{i:05d}" for i in range(n)]
            certs = host_certificates(CertificateAuthority.load(state / "pki"), names, base / "hosts")
            seed_hosts(url, state, certs)
            return {"backend": backend} | _run(base, state, token, url if cluster else None, certs, n, seconds, vms,
                                               {"etcd": list(cluster.pids.values())} if cluster else {})
        finally:
            if cluster is not None:
                cluster.stop(remove=True)


def _run(base: Path, state: Path, token: str, store_url: str | None, certs: dict[str, tuple[Path, str]], n: int,
         seconds: float, vms: int, others: dict[str, list[int]]) -> dict[str, Any]:
    daemon = Daemon(base, store_url)
    workers: list[Worker] = []
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    http = httpx.Client(base_url=f"https://127.0.0.1:{daemon.port}", verify=ctx, timeout=120.0,
                        headers={"Authorization": f"Bearer {token}"})
    try:
        daemon.wait_ready(http)
        hosts = [{"name": h, "cert": str(p), "underlay": str(ipaddress.IPv4Address("10.64.0.1") + i)}
                 for i, (h, (p, _)) in enumerate(certs.items())]
        ramp_s = min(10.0, n / 500)
        config = {"address": "127.0.0.1", "port": daemon.port, "ca": str(state / "pki" / "ca.crt"),
                  "interval": INTERVAL_S, "farm": BIG,
                  "vcpus": max(HOST_VCPUS, -(-2 * vms // n)), "memory_mib": HOST_MEMORY_MIB,
                  "ramp_s": ramp_s}
        workers = start_workers(config, hosts, 1 if n <= 200 else 2)
        _say(f"  ramp: {n} hosts over {len(workers)} client process(es)")
        ramped = wait_ramp(workers, n, daemon, 60 + n * 0.05)
        http.put(f"/v1/farms/{SMALL}", content=farm_yaml(SMALL, 1, 1, "10.200.0.0").encode())
        time.sleep(2 * INTERVAL_S)  # the first reports' writes and passes settle
        _say(f"  steady: {seconds:.0f} s of reports every {INTERVAL_S:.0f} s, long polls and admin calls")
        out = _steady(http, workers, daemon, seconds, others)
        _say(f"  apply: a farm of {vms} VMs")
        try:
            out |= apply_to_all(http, workers, vms, 120.0)
        except (RuntimeError, httpx.HTTPError) as e:  # what the steady window measured still counts
            out |= {"apply_vms": vms, "apply_to_all_s": None, "apply_failed": str(e)}
            _say(f"  apply failed: {e}")
        out |= {"hosts": n, "hosts_ready": sum(w.ready for w in workers),
                "interval_s": INTERVAL_S, "client_processes": len(workers), "ramp_s": round(ramped, 1),
                "rss_mib": daemon.peak_rss(), "manager_threads": _threads(daemon.proc.pid)}
        _say(f"  {n} hosts: report p99 {out['report_p99_ms']} ms, admin p99 {out['admin_p99_ms']} ms, "
             f"cpu {out['cpu_pct']} %, rss {out['rss_mib']} MiB, apply -> all {out['apply_to_all_s']} s")
        return out
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.send("stop")
        for w in workers:
            stop_process(w.proc)
        http.close()
        daemon.stop()


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "")
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_mib": mem, "python": platform.python_version(),
            "kernel": platform.release(), "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def run_manager(hosts: list[int] | None = None, backends: list[str] | None = None, seconds: float = 20.0,
                vms: int = 1000) -> dict[str, Any]:
    raise_fd_limit()
    if threading.current_thread() is threading.main_thread():  # a SIGTERM unwinds: the daemon and clients stop
        signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench manager: stopped by SIGTERM"))
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    store_ok = daemon_takes_store()
    for backend in backends or list(BACKENDS):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
        if backend == "etcd" and not store_ok:
            notes.append("etcd skipped: this `softudc manager` has no --store yet")
            _say(notes[-1])
            continue
        for n in hosts or list(HOST_COUNTS):
            try:
                runs.append(_one(backend, n, seconds, vms))
            except RuntimeError as e:
                notes.append(f"{backend}, {n} hosts: failed: {e}")
                _say(notes[-1])
                runs.append({"backend": backend, "hosts": n, "failed": str(e)})
    return {"benchmark": "manager", "runs": runs, "machine": machine(), "targets": TARGETS,
            "method": {"interval_s": INTERVAL_S, "admin_period_s": ADMIN_PERIOD_S, "admin_per_period":
                       "2 GET /v1/farms, 1 PUT /v1/farms/admin (1 or 2 VMs in turn)", "steady_s": seconds,
                       "apply_vms": vms, "apply_vnets": VM_GROUPS, "percentiles": "nearest rank"},
            "notes": notes}

