"""An eBPF host and a userspace host on one VNET over a veth underlay carry TCP both ways.

Both hosts run the real userspace `Forwarder` on an offload TAP (the script below, in the host's
namespace); host A also runs the programs as its gatekeeper does on the eBPF path (docs/ebpf.md,
"In the gatekeeper"): `vnet_encap` on the TAP's egress with CFG_PUNT, `vnet_decap` into the TAP's
ingress, frames the program passes up (flagged CSUM_PARTIAL: B's) read by A's forwarder. Over a
veth, A's encapsulated frames keep their inner checksum partial and GSO super-frames cross whole;
B's receive path finishes them (gatekeeper/vnet/unflagged.py) and counts what it did.

Skips (with the reason) only when not root or BPF/tc programs cannot be loaded here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.vnet.bpf.loader import default_object, ensure_bpffs, remove_pins

VNET = 77
PFX = f"ebi{os.getpid() % 100000}"
A = {"ip": "10.0.7.1", "ep": "192.168.7.1", "mac": "02:00:00:00:07:01"}
B = {"ip": "10.0.7.2", "ep": "192.168.7.2", "mac": "02:00:00:00:07:02"}
MTU = 1452
REPO = Path(__file__).resolve().parents[5]

FORWARDER = """
import json, sys, time
from gatekeeper.vnet.devices import open_tap
from gatekeeper.vnet.forwarder import Forwarder
from gatekeeper.vnet.port import VnetPort
vnet, local, peer, peer_mac, mtu = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

class Control:  # a static FDB: nothing to resolve
    def on_miss(self, vnet, mac, frame): pass
    def on_stale(self, vnet, mac): pass
    def on_learn(self, vnet, mac, addr): pass
    def on_varp(self, buf, src): pass

fdb = {(vnet, bytes.fromhex(peer_mac.replace(":", ""))): peer}
fwd = Forwarder(local_addr=local, group="239.255.0.1", flood="unicast", fdb=fdb, stale=set(), seen={},
                local_macs=set(), control=Control(), learn=False)
fd = open_tap("vt0", offload=True)
fwd.start()
fwd.add_vnet(VnetPort(vnet, fd, "udp", mtu, (peer,), True))
print("up", flush=True)
sys.stdin.read()  # until the test closes it
port = fwd.vnets[vnet]
fwd.stop()
print(json.dumps({"fixed": dict(getattr(fwd, "rx_fixed", {})),
                  "drops": {p: dict(c) for p, c in fwd.drops.items() if c}, "stats": port.stats}))
"""

SERVER = ("import socket,sys;s=socket.create_server((sys.argv[1],5001));print('listening',flush=True);"
          "c,_=s.accept();n=0\nwhile (b:=c.recv(65536)): n+=len(b)\nprint(n)")
CLIENT = ("import socket,sys,time\nfor i in range(50):\n try: c=socket.create_connection((sys.argv[1],5001),"
          "timeout=10);break\n except OSError: time.sleep(0.1)\nc.sendall(bytes(int(sys.argv[2])));c.close()")


@dataclass
class Lab:
    forwarders: dict[str, subprocess.Popen[str]]  # per host, until `finish`
    spec: Path  # host A's hostctl spec


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(full)} -> {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def _build(tmp: Path) -> Path:
    for h in "AB":
        for role in "he":
            sh("ip", "netns", "add", f"{PFX}{role}{h}")
            sh("ip", "-n", f"{PFX}{role}{h}", "link", "set", "lo", "up")
    sh("ip", "-n", f"{PFX}hA", "link", "add", "uA", "type", "veth", "peer", "name", "uB", "netns", f"{PFX}hB")
    for h, c in (("A", A), ("B", B)):
        hn, en = f"{PFX}h{h}", f"{PFX}e{h}"
        sh("ip", "-n", hn, "addr", "add", f"{c['ip']}/24", "dev", f"u{h}")
        sh("ip", "-n", hn, "link", "set", f"u{h}", "up")
        sh("ip", "-n", hn, "link", "add", "br-v", "type", "bridge")
        sh("ip", "-n", hn, "link", "set", "br-v", "up")
        sh("ip", "-n", en, "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns", hn)
        sh("ip", "-n", en, "link", "set", "eth0", "address", c["mac"], "mtu", str(MTU), "up")
        sh("ip", "-n", en, "addr", "add", f"{c['ep']}/24", "dev", "eth0")
        sh("ip", "-n", hn, "link", "set", "p0", "master", "br-v", "mtu", str(MTU), "up")
    spec = {"pin_dir": str(tmp / "bpfA"), "underlay": "uA", "local_ip": A["ip"], "punt": True,
            "vnets": [{"vnet": VNET, "uplink": "vt0", "hook": "egress", "ingress_ifname": "vt0",
                       "members": [A["ip"], B["ip"]], "fdb": {B["mac"]: B["ip"]}}]}
    path = tmp / "specA.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("eBPF data path test needs root (namespaces, bpffs, tc)")
    if not default_object().exists():
        pytest.skip(f"{default_object()} not built: run scripts/build-bpf.sh (make bootstrap)")
    tmp = tmp_path_factory.mktemp("ebpf-interop")
    spec = tmp / "specA.json"
    fwds: dict[str, subprocess.Popen[str]] = {}
    try:
        spec = _build(tmp)
        ensure_bpffs(tmp / "bpfA")  # in the root mount namespace, so `ip netns exec` children see it
        for h, me, peer in (("A", A, B), ("B", B, A)):
            fwd = fwds[h] = subprocess.Popen(["ip", "netns", "exec", f"{PFX}h{h}", sys.executable, "-c", FORWARDER,
                                              str(VNET), me["ip"], peer["ip"], peer["mac"], str(MTU)],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                                             env={**os.environ, "PYTHONPATH": str(REPO)})
            assert fwd.stdout is not None and fwd.stdout.readline().strip() == "up"
            sh("ip", "link", "set", "vt0", "master", "br-v", "mtu", str(MTU), "up", ns=f"{PFX}h{h}")
        sh(sys.executable, "-m", "gatekeeper.vnet.bpf.hostctl", "up", str(spec), ns=f"{PFX}hA")
        sh("ping", "-c1", "-W2", B["ip"], ns=f"{PFX}hA")  # the underlay neighbours, both ways
        yield Lab(fwds, spec)
    finally:
        for fwd in fwds.values():
            if fwd.poll() is None:
                fwd.kill()
                fwd.wait(10)
        if spec.exists():
            sh(sys.executable, "-m", "gatekeeper.vnet.bpf.hostctl", "down", str(spec), ns=f"{PFX}hA", check=False)
        remove_pins(tmp / "bpfA")
        for h in "AB":
            for role in "he":
                sh("ip", "netns", "del", f"{PFX}{role}{h}", check=False)


def transfer(src: str, dst: dict[str, str], size: int) -> int:
    """Bytes a listener in `dst`'s endpoint received from a client in endpoint `src` sending `size`."""
    server = subprocess.Popen(["ip", "netns", "exec", f"{PFX}e{dst['name']}", sys.executable, "-c", SERVER,
                               dst["ep"]], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        sh(sys.executable, "-c", CLIENT, dst["ep"], str(size), ns=f"{PFX}e{src}", timeout=60)
        out, _ = server.communicate(timeout=30)
        return int(out.strip() or 0)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def finish(fwd: subprocess.Popen[str]) -> dict[str, Any]:
    """Stop a host's forwarder; what it counted (frames it finished, drops by path, VNET stats)."""
    out, _ = fwd.communicate("", timeout=30)
    got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return got


def counters(spec: Path) -> dict[str, int]:
    """Host A's program counters."""
    out = sh(sys.executable, "-m", "gatekeeper.vnet.bpf.hostctl", "counters", str(spec), ns=f"{PFX}hA")
    got: dict[str, int] = json.loads(out)["counters"]
    return got


def test_ping_and_tcp_both_ways_between_an_ebpf_host_and_a_userspace_host(
        lab: Lab) -> None:
    sh("ping", "-c3", "-i0.2", "-W2", B["ep"], ns=f"{PFX}eA")
    sh("ping", "-c2", "-i0.2", "-W2", "-M", "do", "-s", str(MTU - 28), A["ep"], ns=f"{PFX}eB")  # full MTU
    before = counters(lab.spec)
    size = 4_000_000
    assert transfer("A", {**B, "name": "B"}, size) == size  # eBPF -> userspace: super-frames, partial sums
    assert transfer("B", {**A, "name": "A"}, size) == size  # userspace -> eBPF (A's ACKs: partial sums)
    after = counters(lab.spec)
    a, b = finish(lab.forwarders["A"]), finish(lab.forwarders["B"])
    print("eBPF host:", {k: after[k] - before[k] for k in after if after[k] != before[k]}, a)
    print("userspace host:", b)
    assert after["enc_unicast"] - before["enc_unicast"] > 0  # A sent in BPF
    # B's TCP frames leave its TAP partial and flagged so: the program passes them up to A's forwarder
    assert after["dec_pass"] - before["dec_pass"] > 0
    assert b["fixed"].get("partial_csum", 0) > 0, b  # unflagged partial checksums completed by B's kernel
    assert b["fixed"].get("superframe", 0) > 0, b  # whole super-frames written as one GSO frame each
    assert "oversize" not in b["drops"].get("udp", {}), b
