"""Build and tear down a lab: hosts as network namespaces on underlay segments.

    mgmt ns (br0 10.99.0.1) ── mg0 of every host (10.99.0.11, .12, ...)
    segment ns s0 (br0) ── ul0 of h1, h2 ...     10.100.0.0/24
    segment ns s1 (br0) ── ul0 of h3 ...         10.100.1.0/24
    router ns ── one leg per segment (.1), routes unicast, does not forward multicast

Every namespace is named `sudc-<lab>-<role>`, so several labs coexist and `down` finds all of a
lab's namespaces by prefix even when its state file is gone (after a crash). The addresses live
only inside these namespaces; the root namespace gets nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from softudc.lab import shell
from softudc.lab.accel import probe_accel
from softudc.lab.ha import ETCD_ADDRS, start_etcd, start_managers
from softudc.lab.libvirt import libvirt_uri, migration_uri, start_libvirtd
from softudc.lab.manager import MANAGER_ADDR, MANAGER_PORT, call, join_host, manager_addresses, start_manager
from softudc.lab.shell import ip, link, set_sysctl
from softudc.lab.state import (
    NAME_RE,
    PREFIX,
    Host,
    Lab,
    LabError,
    LabSpec,
    default_state_dir,
    guest_dir,
    load_lab,
)
from softudc.lab.vnetd import make_vnetd, start_vnetd
from softudc.localapi import LocalApiClient, LocalApiError
from softudc.power.ipmisim import BMC_ADDR, bmc_port, ipmi_config, start_bmc

METRICS_PORT = 9464



def underlay_ip(segment: int, index: int) -> str:
    return f"10.100.{segment}.{11 + index}"


def lab_up(spec: LabSpec, state_dir: str | None = None, *, progress: bool = False) -> Lab:
    """Create the lab; on any failure, remove what was made and re-raise."""
    spec.validate()
    if os.geteuid() != 0:
        raise LabError("softudc lab needs root (network namespaces); run it as root")
    lab = Lab(spec, state_dir or default_state_dir())
    host_dir = lab.dir.resolve() / f"h{spec.hosts}"
    longest = host_dir / ("libvirt/run/libvirt-sock" if spec.vms else "gatekeeper.sock")
    if len(str(longest)) > 107:
        raise LabError(f"state dir {lab.state_dir} is too deep: the lab's unix sockets would pass the 108-byte "
                       "limit; use a shorter --state-dir (or SOFTUDC_STATE_DIR)")
    if any(ns.startswith(lab.prefix) for ns in shell.netns_list()):
        raise LabError(f"lab {spec.name!r} exists already; `softudc lab down {spec.name}` removes it")
    lab.dir.mkdir(parents=True, exist_ok=True)
    try:
        _build(lab, progress)
    except BaseException:
        lab_down(spec.name, lab.state_dir)
        raise
    return lab


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"  {msg}", file=sys.stderr, flush=True)


def _build(lab: Lab, progress: bool) -> None:
    spec = lab.spec
    _say(progress, f"namespaces for {spec.hosts} hosts on {spec.segments} segment(s)")
    _make_switch(lab.mgmt_ns, "10.99.0.1/24")
    for k in range(spec.segments):
        _make_switch(lab.segment_ns(k), None)
    if spec.segments > 1:
        _make_router(lab)
    for i in range(spec.hosts):
        seg = i * spec.segments // spec.hosts
        name = f"h{i + 1}"
        hdir = lab.dir / name
        hdir.mkdir(parents=True, exist_ok=True)
        host = Host(
            name=name,
            netns=f"{lab.prefix}{name}",
            segment=seg,
            underlay_ip=underlay_ip(seg, i),
            mgmt_ip=f"10.99.0.{11 + i}",
            api_socket=str(hdir / "gatekeeper.sock"),
            config_path=str(hdir / "gatekeeper.toml"),
            log_path=str(hdir / "gatekeeper.log"),
        )
        _make_host(lab, host)
        lab.hosts.append(host)
    _start_daemons(lab, progress)


def _start_daemons(lab: Lab, progress: bool) -> None:
    """What runs on the lab's namespaces, each part as the spec asks: vnetd, libvirtd, the manager
    (hosts joined to it), the gatekeepers."""
    spec = lab.spec
    if spec.vnetd:
        for k in range(spec.segments):
            info = make_vnetd(lab, k)
            lab.vnetds.append(info)
            _say(progress, f"vnetd on segment {k} ({info.address}, {spec.vnetd_peering})")
            start_vnetd(lab, info)
    if spec.vms:
        _start_libvirtds(lab, progress)
    if spec.manager:
        _start_managers(lab, progress)
    lab.save()
    if spec.gatekeepers:
        for host in lab.hosts:
            _say(progress, f"gatekeeper on {host.name} ({host.underlay_ip})")
            start_gatekeeper(lab, host)
        lab.save()
    _start_power(lab, progress)


def _start_power(lab: Lab, progress: bool) -> None:
    """Each host's power config; with power "ipmi", its BMC (an ipmi_sim) first (softudc/power)."""
    for host in lab.hosts:
        host.power = {"driver": "lab", "lab": lab.spec.name, "host": host.name,
                      "state_dir": str(Path(lab.state_dir).resolve())}
        if lab.spec.power == "ipmi":
            _say(progress, f"BMC of {host.name}: ipmi_sim on {BMC_ADDR}:{bmc_port(lab, host)} (management network)")
            host.bmc_pid = start_bmc(lab, host)
            host.power = ipmi_config(lab, host)
        if lab.spec.manager:  # the manager powers hosts with the same config (softudc host power H ...)
            status, body = call(lab, "PUT", f"/v1/hosts/{host.name}/power-config", json.dumps(host.power))
            if status != 200:
                raise LabError(f"the manager refused {host.name}'s power config: {status} {body}")
    lab.save()


def _start_managers(lab: Lab, progress: bool) -> None:
    """The manager (HA: an etcd cluster and two managers), every host joined to it."""
    if lab.spec.ha:
        _say(progress, f"etcd cluster of 3 on {', '.join(ETCD_ADDRS)} (management network)")
        start_etcd(lab)
        start_managers(lab, lambda msg: _say(progress, msg))
    else:
        lab.manager_pid, _ = start_manager(lab)
        _say(progress, f"manager on https://{MANAGER_ADDR}:8443 (management network)")
    for host in lab.hosts:
        lab.manager_files[host.name] = join_host(lab, host)
        _say(progress, f"{host.name} joined the manager")


def _start_libvirtds(lab: Lab, progress: bool) -> None:
    guest = guest_dir(lab.spec)
    for host in lab.hosts:
        _say(progress, f"libvirtd on {host.name} (qemu+tcp://{host.mgmt_ip}/system)")
        host.libvirtd_pid = start_libvirtd(lab, host)
    lab.accel = probe_accel(guest, Path(lab.state_dir))
    _say(progress, f"accelerator: {lab.accel} ({'KVM probe boot succeeded' if lab.accel == 'kvm' else 'TCG'})")


def _make_switch(netns: str, addr: str | None) -> None:
    shell.run(["ip", "netns", "add", netns])
    ip("link", "set", "lo", "up", netns=netns)
    ip("link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0",
       "mcast_snooping", "0", netns=netns)
    if addr:
        ip("addr", "add", addr, "dev", "br0", netns=netns)
    ip("link", "set", "br0", "up", netns=netns)
    set_sysctl(netns, "net.ipv6.conf.all.disable_ipv6", "1")


def _make_router(lab: Lab) -> None:
    rt = lab.router_ns
    shell.run(["ip", "netns", "add", rt])
    ip("link", "set", "lo", "up", netns=rt)
    set_sysctl(rt, "net.ipv4.ip_forward", "1")
    for k in range(lab.spec.segments):
        link(rt, f"seg{k}", lab.segment_ns(k), "rt", lab.spec.underlay_mtu)
        ip("addr", "add", f"10.100.{k}.1/24", "dev", f"seg{k}", netns=rt)
        ip("link", "set", f"seg{k}", "up", netns=rt)


def _make_host(lab: Lab, host: Host) -> None:
    ns = host.netns
    shell.run(["ip", "netns", "add", ns])
    ip("link", "set", "lo", "up", netns=ns)
    set_sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
    link(ns, "ul0", lab.segment_ns(host.segment), host.name, lab.spec.underlay_mtu)
    ip("addr", "add", f"{host.underlay_ip}/24", "dev", "ul0", netns=ns)
    ip("link", "set", "ul0", "up", netns=ns)
    if not lab.spec.offloads:
        shell.in_netns(ns, "ethtool", "-K", "ul0", "tso", "off", "gso", "off", "gro", "off")
    if lab.spec.segments > 1:
        ip("route", "add", "10.100.0.0/16", "via", f"10.100.{host.segment}.1", netns=ns)
    link(ns, "mg0", lab.mgmt_ns, host.name, 1500)
    ip("addr", "add", f"{host.mgmt_ip}/24", "dev", "mg0", netns=ns)
    ip("link", "set", "mg0", "up", netns=ns)


def _datapath_line(spec: LabSpec) -> str:
    """The lab's `datapath` (the bench pins userspace for its ours_udp designs), else
    `SOFTUDC_LAB_DATAPATH=userspace|ebpf|auto` pins every lab gatekeeper's data path (docs/ebpf.md:
    the `vnet` e2e tests run on forced userspace with it); neither, the gatekeeper's default holds."""
    forced = spec.datapath or os.environ.get("SOFTUDC_LAB_DATAPATH", "")
    return f'datapath = "{forced}"\n' if forced else ""


def gatekeeper_config(lab: Lab, host: Host) -> str:
    spec = lab.spec
    varp = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sorted(spec.varp.items()))
    members = [h.underlay_ip for h in lab.hosts if h.name != host.name]
    security = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sorted(spec.security.items()))
    manager = ""
    if spec.manager and host.name in lab.manager_files:
        f = lab.manager_files[host.name]
        manager = f"""
[manager]
url = "{','.join(f'https://{a}:{MANAGER_PORT}' for a in manager_addresses(lab))}"
ca = "{f['ca']}"
cert = "{f['cert']}"
key = "{f['key']}"
vcpus = 4
memory_mib = 2048
interval = 1.0
"""
        if "nbd" in f:  # the storage service (gatekeeper/volumes): the join certificate serves NBD
            hdir = lab.dir / host.name
            manager += f"""
[volumes]
pool_dir = "{hdir / 'pool'}"
run_dir = "{hdir / 'volumes'}"
tls_dir = "{f['nbd']}"
"""
    hypervisor = ""
    if spec.vms:
        g = guest_dir(spec)
        console = lab.dir / host.name / "consoles"
        console.mkdir(parents=True, exist_ok=True)
        hypervisor = f"""
[hypervisor]
uri = "{libvirt_uri(lab, host)}"
kernel = "{g / 'vmlinuz'}"
initrd = "{g / 'initrd.img'}"
accel = "{lab.accel}"
console_dir = "{console}"
migration_uri = "{migration_uri(host)}"
"""
    return f"""# Written by `softudc lab up {spec.name}`.
host = "{host.name}"
api_socket = "{host.api_socket}"

[underlay]
interface = "ul0"
address = "{host.underlay_ip}"
mtu = {spec.underlay_mtu}

[dataplane]
transport = "{spec.transport}"
{_datapath_line(spec)}
[varp]
flood = "{spec.flood}"
hosts = {json.dumps(members)}
{varp}

[metrics]
listen = "{host.mgmt_ip}:{METRICS_PORT}"

[security]
{security}
{hypervisor}{manager}"""


def start_gatekeeper(lab: Lab, host: Host, timeout: float = 15.0) -> None:
    Path(host.config_path).write_text(gatekeeper_config(lab, host))
    log = open(host.log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, sys.executable, "-m", "gatekeeper", "--config", host.config_path],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    host.pid = proc.pid  # `ip netns exec` execs, so this is the gatekeeper's own PID
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise LabError(f"gatekeeper on {host.name} exited with {proc.returncode}; see {host.log_path}:\n"
                           + _tail(host.log_path))
        try:
            LocalApiClient(host.api_socket).call("status")
            return
        except (OSError, LocalApiError):
            if time.monotonic() > deadline:
                raise LabError(f"gatekeeper on {host.name} did not answer within {timeout:.0f} s; "
                               f"see {host.log_path}:\n" + _tail(host.log_path)) from None
            time.sleep(0.05)


def stop_gatekeeper(host: Host) -> None:
    if host.pid:
        shell.stop_pid(host.pid)
        host.pid = None


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


LATE_PASSES = 5  # lab_down's looks for processes started while it stopped the others


def lab_down(name: str, state_dir: str | None = None) -> list[str]:
    """Stop every process in the lab's namespaces (by PID), delete the namespaces and the state.

    Works from the namespace names alone, so it also cleans up after a crash. Returns what it removed.
    """
    if not NAME_RE.match(name):
        raise LabError(f"lab name {name!r}: use 1-10 lowercase letters or digits")
    state_dir = state_dir or default_state_dir()
    prefix = f"{PREFIX}{name}-"
    removed = []
    pids: set[int] = set()
    first: list[int] = []  # HA managers, before the etcd they resign on
    with contextlib.suppress(LabError, KeyError, TypeError, ValueError):
        old = load_lab(name, state_dir)
        first = [m.pid for m in old.managers if m.pid]
        pids.update(h.pid for h in old.hosts if h.pid)
        pids.update(v.pid for v in old.vnetds if v.pid)
        pids.update(h.libvirtd_pid for h in old.hosts if h.libvirtd_pid)
        if old.manager_pid:
            pids.add(old.manager_pid)
        pids.update(m.pid for m in old.etcd if m.pid)
    namespaces = [ns for ns in shell.netns_list() if ns.startswith(prefix)]
    for ns in namespaces:
        pids.update(shell.netns_pids(ns))
    for pid in first + sorted(pids - set(first)):
        shell.stop_pid(pid)
    # Something stopped above may have started a process meanwhile (a BMC's power-on worker starts
    # a gatekeeper): look again until the namespaces are empty, or it outlives their deletion.
    for _ in range(LATE_PASSES):
        late = sorted({p for ns in namespaces for p in shell.netns_pids(ns)})
        if not late:
            break
        for pid in late:
            shell.stop_pid(pid)
    for ns in namespaces:
        shell.run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    shutil.rmtree(Path(state_dir) / "labs" / name, ignore_errors=True)
    return removed


def lab_status(name: str, state_dir: str | None = None) -> dict[str, object]:
    lab = load_lab(name, state_dir)
    present = set(shell.netns_list())
    hosts = []
    for h in lab.hosts:
        hosts.append({
            "host": h.name, "netns": h.netns, "netns_present": h.netns in present,
            "segment": h.segment, "underlay": h.underlay_ip, "mgmt": h.mgmt_ip,
            "gatekeeper_pid": h.pid, "gatekeeper_alive": bool(h.pid and shell.pid_alive(h.pid)),
            "power": (h.power or {}).get("driver"), "bmc_pid": h.bmc_pid,  # softudc host power H ... --direct
        })
    status: dict[str, object] = {"lab": name, "hosts": hosts,
                                 "endpoints": [dataclasses.asdict(e) for e in lab.endpoints.values()]}
    if lab.managers:  # HA: each manager and etcd member, and whether its process runs
        status["managers"] = [{**dataclasses.asdict(m), "alive": bool(m.pid and shell.pid_alive(m.pid))}
                              for m in lab.managers]
        status["etcd"] = [{**dataclasses.asdict(m), "alive": bool(m.pid and shell.pid_alive(m.pid))}
                          for m in lab.etcd]
    return status
