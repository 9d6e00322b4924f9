"""A cluster of local etcd processes (`/usr/bin/etcd`, Debian's etcd-server 3.4) for tests, the
lab and benchmarks: N members on loopback (free ports) or inside network namespaces.

Timing is tuned for fast fail-over on a loaded 2-core machine: a 100 ms heartbeat and a 1 s
election timeout (etcd's defaults are 100/1000 too, but spelt out: the HA tests rely on them).
History is compacted automatically (keep the last 1000 revisions): the store never needs old
history, its `changes()` reads current keys. Every member logs to `<base>/<name>.log`, keeps its
data in `<base>/<name>.data`, and the PIDs are written to `<base>/pids.json` so `cleanup(base)`
can stop what a crashed test left behind. Processes are stopped by PID, never by name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from softudc.etcd.client import EtcdClient, EtcdError

ETCD = "/usr/bin/etcd"
HEARTBEAT_MS = 100
ELECTION_MS = 1000
START_TIMEOUT_S = 60.0
QUOTA_BYTES = 2 * 1024**3
MAX_REQUEST_BYTES = 8 * 1024**2  # etcd's default 1.5 MiB is tight for a big farm's object with its status


_PIDS_LOCK = threading.Lock()


LISTEN_PORTS = (20000, 32767)  # below Linux's ephemeral range (32768-60999), where connections take ports


def free_port(host: str = "127.0.0.1", taken: Collection[int] = ()) -> int:
    """A port nobody listens on now and not in `taken`, picked at random below the ephemeral
    range: a port the kernel picks for bind(0) lies in the range every outgoing connection draws
    from (the members' own peer connections among them), so one could take it before the member
    listens on it."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(*LISTEN_PORTS)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise EtcdError(f"no free port on {host} in {LISTEN_PORTS[0]}-{LISTEN_PORTS[1]} after 200 tries; "
                    "what is listening there (ss -ltn)?")


def free_port_pairs(hosts: list[str]) -> list[tuple[int, int]]:
    """A (client, peer) pair of free ports per host, no port twice: a port is only free until a
    member binds it, so two picks of one start must not land on the same one (CI at 8f72449 drew
    one port for two members and etcd refused the cluster as having a duplicate URL)."""
    chosen: list[int] = []
    for host in hosts:
        for _ in ("client", "peer"):
            chosen.append(free_port(host, chosen))
    return list(zip(chosen[::2], chosen[1::2], strict=True))


@dataclass
class Member:
    name: str
    host: str
    client_port: int
    peer_port: int
    netns: str | None
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


@dataclass
class EtcdCluster:
    base_dir: Path
    members: list[Member]
    token: str
    binary: str = ETCD
    _pids: dict[str, int] = field(default_factory=dict)

    # -- start ----------------------------------------------------------------------------------

    @classmethod
    def start(cls, base_dir: Path, members: int = 3, host: str | list[str] = "127.0.0.1",
              netns: str | list[str | None] | None = None, ports: list[tuple[int, int]] | None = None,
              binary: str = ETCD, timeout: float = START_TIMEOUT_S) -> EtcdCluster:
        """Start `members` etcd members and wait until every one answers. `host` and `netns` may
        be one for all or one per member; `ports` is (client, peer) per member (free loopback
        ports when not given; 2379+10i and 2380+10i for members in namespaces)."""
        if not Path(binary).exists():
            raise EtcdError(f"{binary} is missing: install Debian's etcd-server (scripts/bootstrap.sh does)")
        hosts = host if isinstance(host, list) else [host] * members
        nss = netns if isinstance(netns, list) else [netns] * members
        if ports is None and any(nss):  # a namespace's ports are its own: etcd's usual ones, spaced
            ports = [(2379 + 10 * i, 2380 + 10 * i) for i in range(members)]
        elif ports is None:
            ports = free_port_pairs(hosts)
        if not len(hosts) == len(nss) == len(ports) == members:
            raise ValueError(f"{members} members need as many hosts, netns and ports: got {hosts}, {nss}, {ports}")
        base_dir.mkdir(parents=True, exist_ok=True)
        cluster = cls(base_dir, [Member(f"etcd{i}", hosts[i], ports[i][0], ports[i][1], nss[i])
                                 for i in range(members)], f"softudc-{uuid.uuid4().hex[:12]}", binary)
        try:
            for i in range(members):
                cluster._spawn(i, new=True)
            cluster.wait(range(members), timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def url(self) -> str:
        """The store URL (decision 1), without a prefix: `etcd://h:p,h:p`."""
        return "etcd://" + ",".join(f"{m.host}:{m.client_port}" for m in self.members)

    @property
    def pids(self) -> dict[str, int]:
        return dict(self._pids)

    def client(self, timeout: float = 5.0) -> EtcdClient:
        return EtcdClient(self.endpoints, timeout)

    def _argv(self, i: int, new: bool) -> list[str]:
        m = self.members[i]
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        argv = [self.binary, "--name", m.name, "--data-dir", str(self.base_dir / f"{m.name}.data"),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new" if new else "existing",
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
                "--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000",
                "--quota-backend-bytes", str(QUOTA_BYTES), "--max-request-bytes", str(MAX_REQUEST_BYTES),
                "--logger", "zap", "--log-outputs", "stderr"]
        return ["ip", "netns", "exec", m.netns, *argv] if m.netns else argv

    def _spawn(self, i: int, new: bool) -> None:
        m = self.members[i]
        if m.log is not None:
            m.log.close()
        m.log = open(self.base_dir / f"{m.name}.log", "ab")  # noqa: SIM115 (closed by stop/kill)
        # `ip netns exec` execs etcd after entering the namespace: the PID is etcd's.
        m.process = subprocess.Popen(self._argv(i, new), stdin=subprocess.DEVNULL, stdout=m.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._pids[m.name] = m.process.pid
        self._save_pids()

    def _save_pids(self) -> None:
        """pids.json replaced atomically (members may be restarted from several threads at once)."""
        with _PIDS_LOCK:
            tmp = self.base_dir / f"pids.json.{threading.get_ident()}"
            tmp.write_text(json.dumps(self._pids))
            tmp.replace(self.base_dir / "pids.json")

    # -- readiness ------------------------------------------------------------------------------

    def answers(self, i: int) -> bool:
        """Does member i answer its status (from inside its namespace if it has one)?"""
        m = self.members[i]
        if m.netns:
            argv = ["ip", "netns", "exec", m.netns, "etcdctl", "--endpoints", m.client_url,
                    "--command-timeout=1s", "endpoint", "status"]
            return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
        client = EtcdClient([m.client_url], timeout=1.0)
        try:
            row = client.status()[0]
            return bool(row["ok"] and row["leader"])
        finally:
            client.close()

    def wait(self, members: range | list[int], timeout: float = START_TIMEOUT_S) -> None:
        """Until every member of `members` answers with a leader known, or EtcdError."""
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            for i in list(pending):
                self._check_alive(i)
                if self.answers(i):
                    pending.remove(i)
            if pending and time.monotonic() > deadline:
                names = ", ".join(self.members[i].name for i in pending)
                raise EtcdError(f"etcd members {names} did not answer within {timeout:.0f} s: see their logs in "
                                f"{self.base_dir} (*.log)")
            if pending:
                time.sleep(0.1)

    def _check_alive(self, i: int) -> None:
        m = self.members[i]
        if m.process is not None and m.process.poll() is not None:
            tail = (self.base_dir / f"{m.name}.log").read_bytes()[-1500:].decode(errors="replace")
            raise EtcdError(f"etcd member {m.name} exited with {m.process.returncode}; the end of its log "
                            f"({self.base_dir / (m.name + '.log')}):\n{tail}")

    # -- faults and stop ------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """SIGKILL member i (a crash: no clean shutdown), and reap it."""
        m = self.members[i]
        if m.process is not None and m.process.poll() is None:
            m.process.send_signal(signal.SIGKILL)
            m.process.wait()
        m.process = None
        self._pids.pop(m.name, None)
        self._save_pids()

    def restart(self, i: int, timeout: float = START_TIMEOUT_S) -> None:
        """Start member i again on its data dir (killing it first if it runs); waits until it answers."""
        self.kill(i)
        self._spawn(i, new=False)
        self.wait([i], timeout)

    def stop(self, remove: bool = False, timeout: float = 10.0) -> None:
        """Stop every member (SIGTERM, SIGKILL after `timeout`), by PID; `remove` deletes the data."""
        for m in self.members:
            if m.process is not None and m.process.poll() is None:
                m.process.terminate()
        for i, m in enumerate(self.members):
            if m.process is not None:
                try:
                    m.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill(i)
            m.process = None
            if m.log is not None:
                m.log.close()
                m.log = None
        self._pids.clear()
        self._save_pids()
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def cleanup(base_dir: Path) -> list[int]:
    """Kill the etcd processes a crashed run left in `base_dir` (by the PIDs it recorded, and only
    if that PID still runs etcd on this directory). Returns the PIDs killed."""
    try:
        pids: dict[str, int] = json.loads((base_dir / "pids.json").read_text())
    except (OSError, ValueError):
        return []
    killed = []
    for pid in pids.values():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(str(base_dir).encode()) for arg in cmdline) and b"etcd" in cmdline[0]:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed
