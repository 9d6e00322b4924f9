"""The GRO veth pair of an eBPF VNET, set up by the gatekeeper's FastPath on real devices in a
namespace: a wire-like underlay (GSO off) chooses GRO after decapsulation; the VNET then gets
vngd/vngb on its bridge (no floods, isolated like the TAP, GRO on the bridge side, no TSO on the
decap side), decapsulated frames go to vngd with misses punted to the TAP; removing the VNET and
stopping remove the pair. A default veth underlay gets none. Skips only without root or the object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gatekeeper.vnet.bpf import grolink
from gatekeeper.vnet.bpf.loader import default_object

NS = f"grol{os.getpid() % 100000}"

SCRIPT = r"""
import fcntl, json, os, socket, struct, subprocess, sys
from pathlib import Path
from gatekeeper.config import parse_config
from gatekeeper.vnet.bpf import layouts
from gatekeeper.vnet.bpf.fastpath import FastPath
from gatekeeper.vnet.port import VnetPort

def sh(*a): return subprocess.run(a, check=True, capture_output=True, text=True).stdout
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"vntap7", 0x0002 | 0x1000))
sh("ip", "link", "add", "vnbr7", "type", "bridge"); sh("ip", "link", "set", "vnbr7", "up")
sh("ip", "link", "set", "vntap7", "master", "vnbr7", "up")
cfg = parse_config({"host": "h1", "api_socket": "/tmp/x.sock", "underlay": {"interface": "ul0", "address": "10.9.0.1"},
                    "dataplane": {"datapath": "ebpf"}})
fp = FastPath(cfg, Path(sys.argv[1]) / "state.json")
choice = fp.add(VnetPort(7, -1, "udp", 1452, ("10.9.0.2",), False, "none"), "vntap7")
out = {"path": choice.path, "gro": fp.status()["gro"], "links": json.loads(sh("bridge", "-j", "-d", "link", "show")),
       "decap_tso": fp.gro.on and sh("ethtool", "-k", "vngd7"), "port_gro": fp.gro.on and sh("ethtool", "-k", "vngb7"),
       "local": layouts.Local.unpack(fp._dp.lookup("ebs_local", layouts.u32(7), 16)).__repr__() if fp._dp else None,
       "ifindex": {n: socket.if_nametoindex(n) for n in ("vntap7", "vngd7") if os.path.exists(f"/sys/class/net/{n}")}}
fp.remove(7)
out["after_remove"] = subprocess.run(["ip", "link", "show", "vngd7"], capture_output=True).returncode
fp.stop()
print(json.dumps(out))
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("namespaces, TAPs and tc programs need root")
    if not default_object().exists():
        pytest.skip(f"{default_object()} not built: run scripts/build-bpf.sh (make bootstrap)")
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "add", "ul0", "type", "veth", "peer", "name", "ulp")
        sh("ip", "-n", NS, "addr", "add", "10.9.0.1/24", "dev", "ul0")
        sh("ip", "-n", NS, "link", "set", "ul0", "up")
        sh("ip", "-n", NS, "link", "set", "ulp", "up")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, timeout=30)


def run(ns: str, tmp: str) -> dict[str, object]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, tmp], capture_output=True,
                         text=True, timeout=60, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_wire_like_underlay_gets_the_gro_pair(netns: str, tmp_path: object) -> None:
    sh("ip", "netns", "exec", netns, "ethtool", "-K", "ul0", "gso", "off", "tso", "off")
    got = run(netns, str(tmp_path))
    assert got["path"] == "ebpf"
    assert isinstance(got["gro"], dict) and got["gro"]["gro_after_decap"] is True, got["gro"]
    links = {link["ifname"]: link for link in got["links"]}  # type: ignore[attr-defined]
    port = links["vngb7"]
    assert port["master"] == "vnbr7" and port["isolated"] and not port["flood"] and not port["bcast_flood"]
    assert not port["mcast_flood"] and links["vntap7"]["isolated"]
    assert "tx-tcp-segmentation: off" in str(got["decap_tso"])
    assert "generic-receive-offload: on" in str(got["port_gro"])
    ifx = got["ifindex"]
    assert isinstance(ifx, dict)
    assert got["local"] == f"Local(ifindex={ifx['vngd7']}, redirect_flags=0, mtu=1452, punt_ifindex={ifx['vntap7']})"
    assert got["after_remove"] != 0, "removing the VNET left its GRO veth pair"


def test_default_veth_underlay_gets_no_pair(netns: str, tmp_path: object) -> None:
    got = run(netns, str(tmp_path))
    assert isinstance(got["gro"], dict) and got["gro"]["gro_after_decap"] is False, got["gro"]
    assert all(link["ifname"] not in grolink.names(7) for link in got["links"])  # type: ignore[attr-defined]
    ifx = got["ifindex"]
    assert isinstance(ifx, dict) and "vngd7" not in ifx
    assert got["local"] == f"Local(ifindex={ifx['vntap7']}, redirect_flags=1, mtu=1452, punt_ifindex=0)"


def test_names_fit_interface_names() -> None:
    assert all(len(n) <= 15 for n in grolink.names(4094))
