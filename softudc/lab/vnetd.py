"""A vnetd per underlay segment, each in its own namespace on the segment's bridge
(10.100.<k>.250), peered as a full mesh (a triangle for three segments) or a chain. Each is on the
management network too (10.99.0.<240+k>), where it serves its Prometheus metrics (METRICS_PORT)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from softudc.lab import shell
from softudc.lab.shell import ip, link, set_sysctl
from softudc.lab.state import Lab, LabError, VnetdInfo
from softudc.localapi import LocalApiClient, LocalApiError

METRICS_PORT = 9465


def vnetd_address(k: int) -> str:
    return f"10.100.{k}.250"


def vnetd_mgmt_ip(k: int) -> str:
    """Segment k's vnetd on the management network (Prometheus scrapes it there)."""
    return f"10.99.0.{240 + k}"


def peers_of(lab: Lab, k: int) -> list[str]:
    n = lab.spec.segments
    if lab.spec.vnetd_peering == "chain":
        neighbours = [j for j in (k - 1, k + 1) if 0 <= j < n]
    else:
        neighbours = [j for j in range(n) if j != k]
    return [vnetd_address(j) for j in neighbours]


def make_vnetd(lab: Lab, k: int) -> VnetdInfo:
    netns = f"{lab.prefix}vd{k}"
    shell.run(["ip", "netns", "add", netns])
    ip("link", "set", "lo", "up", netns=netns)
    set_sysctl(netns, "net.ipv6.conf.all.disable_ipv6", "1")
    link(netns, "vd0", lab.segment_ns(k), "vd", lab.spec.underlay_mtu)
    ip("addr", "add", f"{vnetd_address(k)}/24", "dev", "vd0", netns=netns)
    ip("link", "set", "vd0", "up", netns=netns)
    if lab.spec.segments > 1:
        ip("route", "add", "10.100.0.0/16", "via", f"10.100.{k}.1", netns=netns)
    link(netns, "mg0", lab.mgmt_ns, f"vd{k}", 1500)
    ip("addr", "add", f"{vnetd_mgmt_ip(k)}/24", "dev", "mg0", netns=netns)
    ip("link", "set", "mg0", "up", netns=netns)
    d = lab.dir / f"vnetd{k}"
    d.mkdir(parents=True, exist_ok=True)
    info = VnetdInfo(segment=k, netns=netns, address=vnetd_address(k), api_socket=str(d / "vnetd.sock"),
                     config_path=str(d / "vnetd.toml"), log_path=str(d / "vnetd.log"))
    Path(info.config_path).write_text(f"""# Written by `softudc lab up {lab.spec.name}`.
name = "segment-{k}"
address = "{info.address}"
interface = "vd0"
api_socket = "{info.api_socket}"
key = "{lab.relay_key}"
peers = {json.dumps(peers_of(lab, k))}
hello_interval = 0.5

[metrics]
listen = "{vnetd_mgmt_ip(k)}:{METRICS_PORT}"
""")
    return info


def start_vnetd(lab: Lab, info: VnetdInfo, timeout: float = 10.0) -> None:
    log = open(info.log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["ip", "netns", "exec", info.netns, sys.executable, "-m", "vnetd", "--config",
                             info.config_path], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    info.pid = proc.pid
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise LabError(f"vnetd of segment {info.segment} exited with {proc.returncode}; see {info.log_path}")
        try:
            LocalApiClient(info.api_socket).call("status")  # the same JSON-lines protocol
            return
        except (OSError, LocalApiError):
            if time.monotonic() > deadline:
                raise LabError(f"vnetd of segment {info.segment} did not answer; see {info.log_path}") from None
            time.sleep(0.05)


def stop_vnetd(info: VnetdInfo) -> None:
    if info.pid:
        shell.stop_pid(info.pid)
        info.pid = None
