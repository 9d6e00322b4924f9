"""`softudc bench dataplane`: our VNET transports against the underlay, kernel VXLAN and OpenVPN
(tap) on the same two-host underlay, interleaved, in one run.

Each design gets a fresh 2-host lab per repetition; designs are interleaved and their order is
reversed on every other repetition, so slow drifts on a shared machine hit all designs alike.
Results are medians over repetitions; ratios are medians of per-repetition ratios (both sides
measured minutes apart in the same repetition), as reference/dataplane.md recommends.
"""

from __future__ import annotations

import functools
import os
import pathlib
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from softudc.bench import measure
from softudc.lab import Lab, LabSpec, lab_down, lab_up, shell
from softudc.lab.endpoint import add_endpoint
from softudc.lab.shell import ip
from softudc.localapi import LocalApiClient

DESIGNS = ["underlay", "vxlan", "openvpn", "openvpn_gcm", "ours_udp", "ours_raw", "ours_esp", "ours_ebpf"]
GUEST_A, GUEST_B = "10.20.0.1", "10.20.0.2"


@dataclass
class Path:
    """Where traffic starts and ends for one design."""

    client_ns: str
    server_ns: str
    server_ip: str
    mtu: int
    pids: list[int] = field(default_factory=list)
    cleanup: list[Callable[[], object]] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)  # reported with the design's figures


def _guest(lab: Lab, name: str, host_ns: str, bridge: str, addr: str, mtu: int) -> str:
    ns = f"{lab.prefix}e-{name}"
    shell.run(["ip", "netns", "add", ns])
    ip("link", "set", "lo", "up", netns=ns)
    ip("link", "add", "eth0", "netns", ns, "mtu", str(mtu), "type", "veth", "peer", "name", f"ep-{name}",
       "netns", host_ns, "mtu", str(mtu))
    ip("link", "set", f"ep-{name}", "master", bridge, "up", netns=host_ns)
    ip("addr", "add", f"{addr}/24", "dev", "eth0", netns=ns)
    ip("link", "set", "eth0", "up", netns=ns)
    return ns


def _bridge(host_ns: str, name: str) -> None:
    ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0", netns=host_ns)
    ip("link", "set", name, "up", netns=host_ns)


def setup_underlay(lab: Lab) -> Path:
    h1, h2 = lab.hosts
    return Path(h1.netns, h2.netns, h2.underlay_ip, lab.spec.underlay_mtu)


def setup_vxlan(lab: Lab) -> Path:
    h1, h2 = lab.hosts
    mtu = lab.spec.underlay_mtu - 50
    for me, peer, guest_ip, name in ((h1, h2, GUEST_A, "a"), (h2, h1, GUEST_B, "b")):
        _bridge(me.netns, "br42")
        ip("link", "add", "vx42", "type", "vxlan", "id", "42", "local", me.underlay_ip, "remote", peer.underlay_ip,
           "dstport", "4789", "dev", "ul0", netns=me.netns)
        ip("link", "set", "vx42", "master", "br42", "mtu", str(mtu), "up", netns=me.netns)
        _guest(lab, name, me.netns, "br42", guest_ip, mtu)
    return Path(f"{lab.prefix}e-a", f"{lab.prefix}e-b", GUEST_B, mtu)


def setup_openvpn(lab: Lab, gcm: bool = False) -> Path:
    """OpenVPN 2.6 in tap mode, peer to peer over UDP: what a user would pick instead. Without
    crypto, or with AES-256-GCM (TLS 1.3 between self-signed peers pinned by fingerprint)."""
    h1, h2 = lab.hosts
    # Measured overheads (reference/dataplane.md): UDP payload = frame; GCM adds 24 bytes.
    mtu = lab.spec.underlay_mtu - (66 if gcm else 42)
    crypto: dict[str, list[str]] = {h.name: ["--cipher", "none", "--auth", "none"] for h in lab.hosts}
    if gcm:
        from softudc.bench.certs import self_signed

        (s_crt, s_key, s_fp), (c_crt, c_key, c_fp) = (self_signed(lab.dir, n) for n in ("ovs", "ovc"))
        common = ["--data-ciphers", "AES-256-GCM"]
        crypto = {h1.name: ["--tls-server", "--dh", "none", "--cert", str(s_crt), "--key", str(s_key),
                            "--peer-fingerprint", c_fp, *common],
                  h2.name: ["--tls-client", "--cert", str(c_crt), "--key", str(c_key), "--peer-fingerprint", s_fp,
                            *common]}
    pids = []
    for me, peer, guest_ip, name in ((h1, h2, GUEST_A, "a"), (h2, h1, GUEST_B, "b")):
        log = open(os.path.join(lab.dir, f"openvpn-{me.name}.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            ["ip", "netns", "exec", me.netns, "openvpn", "--dev", "ovtap", "--dev-type", "tap", "--proto", "udp",
             "--local", me.underlay_ip, "--remote", peer.underlay_ip, "--lport", "1194", "--rport", "1194",
             *crypto[me.name], "--disable-dco", "--fast-io", "--tun-mtu", str(mtu),
             "--verb", "1"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        pids.append(proc.pid)
        deadline = time.monotonic() + 10
        while "ovtap" not in ip("-o", "link", "show", netns=me.netns):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"openvpn on {me.name} did not create its tap; see {log.name}")
            time.sleep(0.1)
        _bridge(me.netns, "brov")
        ip("link", "set", "ovtap", "master", "brov", "up", netns=me.netns)
        _guest(lab, name, me.netns, "brov", guest_ip, mtu)
    return Path(f"{lab.prefix}e-a", f"{lab.prefix}e-b", GUEST_B, mtu, pids)


def setup_ours(lab: Lab, security: str = "none") -> Path:
    extra: dict[str, Any] = {}
    if security != "none":
        extra = {"security": security, "keys": {"send_epoch": 1, "secrets": {"1": secrets.token_hex(32)}}}
    for h in lab.hosts:
        info = LocalApiClient(h.api_socket).call("vnet.create", vnet=10, **extra)
    add_endpoint(lab, "a", "h1", 10, f"{GUEST_A}/24")
    add_endpoint(lab, "b", "h2", 10, f"{GUEST_B}/24")
    return Path(f"{lab.prefix}e-a", f"{lab.prefix}e-b", GUEST_B, int(info["mtu"]))


def setup_ebpf(lab: Lab, gro: str = "auto") -> Path:
    """Our wire format from the eBPF tc programs (gatekeeper/vnet/bpf, docs/ebpf.md): a veth pair
    vl0/vb0 is the bridge's uplink, encap on vl0's ingress, decap on ul0's ingress into vb0 (GRO
    after decap off) or out of vl0 to be merged by vb0's GRO (on). `gro`: auto = hostctl chooses
    from the underlay's offload features (gatekeeper/vnet/bpf/gro.py); on/off force it. The
    setting used is reported as `gro_after_decap` (1 on, 0 off)."""
    import json

    mtu = lab.spec.underlay_mtu - 48
    guests = {}
    for me, guest_ip, name in ((lab.hosts[0], GUEST_A, "a"), (lab.hosts[1], GUEST_B, "b")):
        _bridge(me.netns, "br42")
        ip("link", "add", "vl0", "mtu", str(mtu), "type", "veth", "peer", "name", "vb0", "mtu", str(mtu),
           netns=me.netns)
        ip("link", "set", "vb0", "master", "br42", "up", netns=me.netns)
        ip("link", "set", "vl0", "up", netns=me.netns)
        ens = _guest(lab, name, me.netns, "br42", guest_ip, mtu)
        guests[me.name] = ip("-j", "link", "show", "eth0", netns=ens)
    cleanup: list[Callable[[], object]] = []
    for me in lab.hosts[:2]:
        pin = os.path.join(lab.dir, f"bpf-{me.name}")
        os.makedirs(pin, exist_ok=True)  # a bpffs of its own per host, mounted here so `ip netns exec` sees it
        shell.run(["mount", "-t", "bpf", "bpf", pin])
        cleanup.append(functools.partial(shell.run, ["umount", pin], check=False))
        fdb = {json.loads(out)[0]["address"]: h.underlay_ip for h, out in
               ((h, guests[h.name]) for h in lab.hosts[:2] if h.name != me.name)}
        spec = {"pin_dir": pin, "underlay": "ul0", "local_ip": me.underlay_ip,
                "vnets": [{"vnet": 42, "uplink": "vl0", "ingress_ifname": "vb0", "mtu": mtu, "gro": gro,
                           "members": [h.underlay_ip for h in lab.hosts[:2]], "fdb": fdb}]}
        spec_path = os.path.join(lab.dir, f"ebpf-{me.name}.json")
        pathlib.Path(spec_path).write_text(json.dumps(spec))
        out = shell.run(["ip", "netns", "exec", me.netns, sys.executable, "-m", "gatekeeper.vnet.bpf.hostctl",
                         "up", spec_path])
        choice = json.loads(out.strip().splitlines()[-1])["gro"]["42"]
        print(f"  {me.name}: GRO after decap {'on' if choice['gro_after_decap'] else 'off'} ({choice['reason']})",
              file=sys.stderr, flush=True)
        gro_on = float(choice["gro_after_decap"])
        shell.run(["ip", "netns", "exec", me.netns, "ping", "-c1", "-W2", lab.hosts[1].underlay_ip
                   if me is lab.hosts[0] else lab.hosts[0].underlay_ip])  # resolve the underlay neighbour
    return Path(f"{lab.prefix}e-a", f"{lab.prefix}e-b", GUEST_B, mtu, cleanup=cleanup,
                extra={"gro_after_decap": gro_on})


SETUPS: dict[str, tuple[Callable[[Lab], Path], dict[str, Any]]] = {
    "underlay": (setup_underlay, {"gatekeepers": False}),
    "vxlan": (setup_vxlan, {"gatekeepers": False}),
    "openvpn": (setup_openvpn, {"gatekeepers": False}),
    "openvpn_gcm": (lambda lab: setup_openvpn(lab, gcm=True), {"gatekeepers": False}),
    # the userspace forwarder, whatever the gatekeepers' default path (auto: eBPF for plain VNETs)
    "ours_udp": (setup_ours, {"transport": "udp", "datapath": "userspace"}),
    "ours_raw": (setup_ours, {"transport": "raw", "datapath": "userspace"}),
    "ours_esp": (lambda lab: setup_ours(lab, "conf"), {"transport": "udp", "datapath": "userspace"}),
    "ours_ebpf": (setup_ebpf, {"gatekeepers": False}),
    # not in DESIGNS (run with --designs): the eBPF path with GRO after decap forced either way,
    # to show what the automatic choice (ours_ebpf) gains on this underlay
    "ours_ebpf_gro_on": (functools.partial(setup_ebpf, gro="on"), {"gatekeepers": False}),
    "ours_ebpf_gro_off": (functools.partial(setup_ebpf, gro="off"), {"gatekeepers": False}),
}


def measure_design(design: str, seconds: float, offloads: bool, state_dir: str) -> dict[str, float]:
    setup, spec_args = SETUPS[design]
    lab = lab_up(LabSpec("b" + secrets.token_hex(3), hosts=2, offloads=offloads, **spec_args), state_dir)
    server = None
    path: Path | None = None
    try:
        path = setup(lab)
        measure.wait_reachable(path.client_ns, path.server_ip, path.mtu - 28)
        p50, p99 = measure.ping_percentiles(path.client_ns, path.server_ip)
        server = measure.IperfServer.start(path.server_ns)
        frags = [measure.frag_creates(h.netns) for h in lab.hosts]
        tcp, cpu_per_gbps = measure.iperf_tcp_with_cpu(path.client_ns, path.server_ip, seconds)
        pps = measure.iperf_udp_pps(path.client_ns, path.server_ip, max(2.0, seconds - 1))
        fragments = sum(measure.frag_creates(h.netns) for h in lab.hosts) - sum(frags)
        return {"tcp_mbps": tcp, "tcp_cpu_cores_per_gbps": cpu_per_gbps, "udp64_pps": pps, "ping_p50_us": p50,
                "ping_p99_us": p99, "fragments": float(fragments), "mtu": float(path.mtu), **path.extra}
    finally:
        if server:
            server.stop()
        lab_down(lab.spec.name, state_dir)
        for undo in path.cleanup if path else []:
            undo()


def run_dataplane(reps: int = 3, seconds: float = 5.0, offloads: bool = True,
                  designs: list[str] | None = None, state_dir: str | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError("softudc bench dataplane needs root (it builds network namespaces)")
    designs = designs or DESIGNS
    unknown = set(designs) - set(SETUPS)
    if unknown:
        raise ValueError(f"unknown design(s) {', '.join(sorted(unknown))}; known: {', '.join(DESIGNS)}")
    import tempfile

    state = state_dir or tempfile.mkdtemp(prefix="softudc-bench-")
    runs: list[dict[str, dict[str, float]]] = []
    total = reps * len(designs)
    done = 0
    started = time.monotonic()
    for rep in range(reps):
        order = designs if rep % 2 == 0 else list(reversed(designs))
        run: dict[str, dict[str, float]] = {}
        for design in order:
            done += 1
            print(f"[{done}/{total}] rep {rep + 1}/{reps} {design} ... ", end="", file=sys.stderr, flush=True)
            run[design] = measure_design(design, seconds, offloads, state)
            r = run[design]
            print(f"tcp {r['tcp_mbps']:.0f} Mbit/s ({r['tcp_cpu_cores_per_gbps']:.2f} cores/Gbit/s), "
                  f"udp64 {r['udp64_pps']:.0f} pps, p50 {r['ping_p50_us']:.0f} us, "
                  f"frags {r['fragments']:.0f}  ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        runs.append(run)
    results = {d: {k: statistics.median(r[d][k] for r in runs) for k in runs[0][d]} for d in designs}

    def ratio(a: str, b: str, metric: str) -> float | None:
        if a not in designs or b not in designs:
            return None
        return statistics.median(r[a][metric] / r[b][metric] for r in runs if r[b][metric])

    ratios = {
        "ours_udp_tcp_vs_vxlan": ratio("ours_udp", "vxlan", "tcp_mbps"),
        "ours_udp_tcp_vs_openvpn": ratio("ours_udp", "openvpn", "tcp_mbps"),
        "ours_udp_pps_vs_vxlan": ratio("ours_udp", "vxlan", "udp64_pps"),
        "ours_raw_tcp_vs_openvpn": ratio("ours_raw", "openvpn", "tcp_mbps"),
        "ours_udp_tcp_vs_underlay": ratio("ours_udp", "underlay", "tcp_mbps"),
        "ours_esp_tcp_vs_openvpn_gcm": ratio("ours_esp", "openvpn_gcm", "tcp_mbps"),
        "ours_esp_tcp_vs_vxlan": ratio("ours_esp", "vxlan", "tcp_mbps"),
        "ours_ebpf_tcp_vs_vxlan": ratio("ours_ebpf", "vxlan", "tcp_mbps"),
        "ours_ebpf_pps_vs_vxlan": ratio("ours_ebpf", "vxlan", "udp64_pps"),
        "ours_ebpf_tcp_vs_ours_udp": ratio("ours_ebpf", "ours_udp", "tcp_mbps"),
        "ours_ebpf_gro_on_tcp_vs_vxlan": ratio("ours_ebpf_gro_on", "vxlan", "tcp_mbps"),
        "ours_ebpf_gro_off_tcp_vs_vxlan": ratio("ours_ebpf_gro_off", "vxlan", "tcp_mbps"),
    }
    return {
        "benchmark": "dataplane",
        "reps": reps,
        "seconds": seconds,
        "underlay_offloads": offloads,
        "cpus": os.cpu_count(),
        "results": results,
        "ratios": {k: v for k, v in ratios.items() if v is not None},
        "runs": runs,
    }
