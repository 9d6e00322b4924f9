"""An HA lab's manager group (`softudc lab up NAME --vms --manager --ha`): a 3-member etcd
cluster and 2 managers, all in the management namespace.

    mgmt ns br0: 10.99.0.1 m1, 10.99.0.2 m2 (https :8443, metrics :9465)
                 10.99.0.5-.7 etcd0-2 (client :2379, peer :2380)

Both managers share the lab's manager directory (CA, server certificate naming both addresses,
tokens: decision 7) and the store `etcd://10.99.0.5:2379,10.99.0.6:2379,10.99.0.7:2379`; every
gatekeeper's `[manager] url` lists both. The helpers below are what the HA tests do to it: kill,
stop and restart a manager or an etcd member (always by PID), and ask who leads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from softudc.lab import shell
from softudc.lab.manager import MANAGER_PORT, call, init_manager_dir, spawn_manager
from softudc.lab.state import EtcdMemberInfo, Lab, LabError, ManagerProc

MANAGER_ADDRS = ("10.99.0.1", "10.99.0.2")
ETCD_ADDRS = ("10.99.0.5", "10.99.0.6", "10.99.0.7")
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380


def etcd_dir(lab: Lab) -> Path:
    return lab.dir / "etcd"


def store_url(lab: Lab) -> str:
    return "etcd://" + ",".join(f"{m.host}:{m.client_port}" for m in lab.etcd)


def manager_url(address: str) -> str:
    return f"https://{address}:{MANAGER_PORT}"


def start_etcd(lab: Lab) -> None:
    """The 3-member cluster, each member on its own address of the management bridge."""
    from softudc.etcd.client import EtcdError
    from softudc.etcd.cluster import EtcdCluster

    for addr in ETCD_ADDRS:
        shell.ip("addr", "add", f"{addr}/24", "dev", "br0", netns=lab.mgmt_ns)
    try:
        cluster = EtcdCluster.start(etcd_dir(lab), members=len(ETCD_ADDRS), host=list(ETCD_ADDRS),
                                    netns=lab.mgmt_ns, ports=[(ETCD_CLIENT_PORT, ETCD_PEER_PORT)] * len(ETCD_ADDRS))
    except EtcdError as e:
        raise LabError(f"the lab's etcd cluster did not start: {e}") from None
    pids = cluster.pids
    lab.etcd = [EtcdMemberInfo(m.name, m.host, m.client_port, m.peer_port, pids.get(m.name)) for m in cluster.members]
    lab.etcd_token = cluster.token
    lab.save()


def start_managers(lab: Lab, progress: Any = None) -> None:
    """Initialise the shared manager directory (certificate for both addresses) and start m1, m2."""
    init_manager_dir(lab, list(MANAGER_ADDRS))
    for addr in MANAGER_ADDRS[1:]:
        shell.ip("addr", "add", f"{addr}/24", "dev", "br0", netns=lab.mgmt_ns)
    lab.managers = [ManagerProc(f"m{i + 1}", addr) for i, addr in enumerate(MANAGER_ADDRS)]
    for i in range(len(lab.managers)):
        restart_manager(lab, i)
        if progress:
            progress(f"manager {lab.managers[i].id} on {manager_url(lab.managers[i].address)} "
                     f"(store {store_url(lab)})")


def manager_argv(lab: Lab, i: int) -> list[str]:
    """The options that make manager i one of the group (`softudc manager --listen ... --metrics ...` first)."""
    m = lab.managers[i]
    return ["--store", store_url(lab), "--id", m.id, "--advertise", manager_url(m.address)]


def restart_manager(lab: Lab, i: int, timeout: float = 30.0) -> int:
    """Start manager i (again): same directory, store and address. Returns its PID."""
    m = lab.managers[i]
    if m.pid and shell.pid_alive(m.pid):
        raise LabError(f"manager {m.id} runs already (PID {m.pid}); stop or kill it first")
    m.pid = spawn_manager(lab, m.address, manager_argv(lab, i), f"manager-{m.id}.log", timeout)
    lab.manager_pid = lab.managers[0].pid
    lab.save()
    return m.pid


def kill_manager(lab: Lab, i: int) -> float:
    """SIGKILL manager i (a crash: no resignation, its lease runs out); returns when it was killed
    (time.monotonic(), taken just before the signal)."""
    m = lab.managers[i]
    if not m.pid:
        raise LabError(f"manager {m.id} is not running")
    t = _kill(m.pid)
    m.pid = None
    lab.manager_pid = lab.managers[0].pid
    lab.save()
    return t


def stop_manager(lab: Lab, i: int) -> None:
    """SIGTERM manager i (it resigns and hands over at once), SIGKILL if it lingers."""
    m = lab.managers[i]
    if m.pid:
        shell.stop_pid(m.pid, grace=10.0)
    m.pid = None
    lab.manager_pid = lab.managers[0].pid
    lab.save()


def _kill(pid: int) -> float:
    t = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while shell.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return t


def _cluster(lab: Lab) -> Any:
    """The lab's etcd cluster as recorded (possibly started by another process)."""
    from softudc.etcd.cluster import EtcdCluster, Member

    members = [Member(m.name, m.host, m.client_port, m.peer_port, lab.mgmt_ns) for m in lab.etcd]
    return EtcdCluster(etcd_dir(lab), members, lab.etcd_token,
                       _pids={m.name: m.pid for m in lab.etcd if m.pid})


def kill_etcd(lab: Lab, i: int) -> None:
    """SIGKILL etcd member i (its data dir stays)."""
    m = lab.etcd[i]
    if m.pid:
        _kill(m.pid)
    m.pid = None
    lab.save()


def restart_etcd(lab: Lab, *members: int, timeout: float = 60.0) -> None:
    """Start etcd members again on their data dirs, together (a member waits for a quorum, so a
    cluster that is all down comes back only when they start at once); waits until they answer."""
    from softudc.etcd.client import EtcdError

    for i in members:
        m = lab.etcd[i]
        if m.pid and shell.pid_alive(m.pid):
            raise LabError(f"etcd member {m.name} runs already (PID {m.pid}); kill it first")
    cluster = _cluster(lab)
    try:
        with ThreadPoolExecutor(max(len(members), 1)) as pool:
            list(pool.map(lambda i: cluster.restart(i, timeout), members))
    except EtcdError as e:
        raise LabError(f"etcd members {', '.join(lab.etcd[i].name for i in members)} did not come back: {e}") \
            from None
    finally:
        for mem in cluster.members:  # the cluster object's log files (each child keeps its own)
            if mem.log is not None:
                mem.log.close()
        for i in members:
            lab.etcd[i].pid = cluster.pids.get(lab.etcd[i].name)
        lab.save()


def stop_group(lab: Lab) -> None:
    """Stop every manager (SIGTERM) and etcd member, by PID: what `softudc lab down` does first."""
    for i in range(len(lab.managers)):
        stop_manager(lab, i)
    for m in lab.etcd:
        if m.pid:
            shell.stop_pid(m.pid, grace=10.0)
        m.pid = None
    lab.save()


def etcd_leader(lab: Lab) -> int | None:
    """The index of the etcd member that is the raft leader (etcdctl from the management namespace)."""
    endpoints = ",".join(f"http://{m.host}:{m.client_port}" for m in lab.etcd)
    out = subprocess.run(["ip", "netns", "exec", lab.mgmt_ns, "etcdctl", "--endpoints", endpoints,
                          "--command-timeout=2s", "endpoint", "status", "-w", "json"],
                         capture_output=True, text=True, timeout=30)
    try:
        rows = json.loads(out.stdout or "[]")
    except ValueError:
        return None
    for row in rows:
        status = row.get("Status", {})
        if status.get("leader") and status.get("leader") == status.get("header", {}).get("member_id"):
            return next((i for i, m in enumerate(lab.etcd) if row.get("Endpoint") == f"http://{m.host}:{m.client_port}"),
                        None)
    return None


def manager_status(lab: Lab, i: int) -> dict[str, Any] | None:
    """`GET /v1/manager/status` of manager i alone, or None when it does not answer."""
    try:
        status, body = call(lab, "GET", "/v1/manager/status", addresses=[lab.managers[i].address])
    except LabError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


def leader(lab: Lab) -> str | None:
    """The id of the manager that leads, as the running managers say (None: none says one does)."""
    for i, m in enumerate(lab.managers):
        if not m.pid:
            continue
        body = manager_status(lab, i)
        who = _leader_id(body)
        if who:
            return who
    return None


def _leader_id(body: dict[str, Any] | None) -> str | None:
    if not body:
        return None
    lead = body.get("leader")
    if isinstance(lead, dict) and lead.get("id"):
        return str(lead["id"])
    return str(lead) if isinstance(lead, str) and lead else None
