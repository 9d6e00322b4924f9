"""What we put on the underlay is read by independent tools (scapy, tshark), and packets that
scapy builds are forwarded by our data plane."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.contrib.etherip import EtherIP
from scapy.layers.inet import ICMP, IP
from scapy.utils import rdpcap

from softudc.lab import Lab
from tests.e2e.conftest import Capture, create_vnet, endpoints, gk, ns_run, ping

pytestmark = pytest.mark.vnet
LUA = Path(__file__).resolve().parents[2] / "configs" / "wireshark" / "softudc.lua"


@pytest.fixture
def wire_lab(make_lab: Callable[..., Lab]) -> Lab:
    lab = make_lab(hosts=2)
    create_vnet(lab, 10, transport="udp")
    create_vnet(lab, 11, transport="raw")
    endpoints(lab, {"u1": ("h1", 10, "10.0.0.1/24"), "u2": ("h2", 10, "10.0.0.2/24"),
                    "r1": ("h1", 11, "10.1.0.1/24"), "r2": ("h2", 11, "10.1.0.2/24")})
    return lab


def test_scapy_and_tshark_decode_the_underlay(wire_lab: Lab, captures: Callable[..., Capture]) -> None:
    cap = captures(wire_lab.host("h1").netns, "ul0", "underlay", "udp port 1798 or ip proto 97")
    assert ping(wire_lab, "u1", "10.0.0.2").returncode == 0
    assert ping(wire_lab, "r1", "10.1.0.2").returncode == 0
    pcap = cap.stop()

    raw = [p for p in rdpcap(str(pcap)) if p.haslayer(IP) and p[IP].proto == 97]
    assert raw, "no raw-transport packet captured"
    icmp = [p for p in raw if p.haslayer(EtherIP) and p.haslayer(ICMP)]
    assert icmp, "scapy found no EtherIP with inner ICMP in the raw transport"
    assert {p[EtherIP].version for p in icmp} == {3}
    assert {p[EtherIP].reserved for p in icmp} == {11}  # the VNET id
    assert {p[ICMP].type for p in icmp} == {0, 8}

    def tshark(*args: str) -> list[str]:
        out = subprocess.run(["tshark", "-n", "-r", str(pcap), *args], capture_output=True, text=True, check=True)
        return [line for line in out.stdout.splitlines() if line.strip()]

    raw_rows = tshark("-Y", "etherip && icmp", "-T", "fields", "-e", "ip.proto", "-e", "icmp.type")
    assert raw_rows and all(r.split("\t")[0].startswith("97") for r in raw_rows), raw_rows
    udp_rows = tshark("-X", f"lua_script:{LUA}", "-d", "udp.port==1798,softudc",
                      "-Y", "softudc.id == 2 && etherip && icmp",
                      "-T", "fields", "-e", "softudc.vnet", "-e", "icmp.type")
    assert udp_rows, "tshark did not dissect the UDP transport as SoftUDC + EtherIP + ICMP"
    assert {r.split("\t")[0] for r in udp_rows} == {"10"}
    assert {r.split("\t")[1] for r in udp_rows} == {"0", "8"}


SCAPY_SEND = """
import sys
from scapy.all import conf, send, Raw
from scapy.contrib.etherip import EtherIP
from scapy.layers.inet import IP, UDP, ICMP
from scapy.layers.l2 import Ether
conf.verb = 0
dst, transport, vnet, dmac, inner_dst = sys.argv[1:6]
inner = Ether(src="02:00:00:00:99:99", dst=dmac) / IP(src=inner_dst.rsplit(".", 1)[0] + ".99", dst=inner_dst) \\
    / ICMP(type=8, id=0x5d5d, seq=1) / Raw(b"built-by-scapy")
if transport == "raw":
    pkt = IP(dst=dst) / EtherIP(reserved=int(vnet)) / inner
else:
    pkt = IP(dst=dst) / UDP(sport=1798, dport=1798) / Raw(b"\\x00\\x02\\x00\\x00") / EtherIP(reserved=int(vnet)) / inner
send(pkt)
"""


@pytest.mark.parametrize(("transport", "vnet", "target", "inner_dst"),
                         [("udp", 10, "u1", "10.0.0.1"), ("raw", 11, "r1", "10.1.0.1")])
def test_dataplane_forwards_what_scapy_builds(wire_lab: Lab, captures: Callable[..., Capture], transport: str,
                                              vnet: int, target: str, inner_dst: str) -> None:
    ep = wire_lab.endpoints[target]
    cap = captures(ep.netns, "eth0", f"scapy-{transport}", "icmp")
    before = gk(wire_lab, "h1").call("vnet.list")
    ns_run(wire_lab.host("h2").netns, sys.executable, "-c", SCAPY_SEND, wire_lab.host("h1").underlay_ip,
           transport, str(vnet), ep.mac, inner_dst)
    time.sleep(0.5)
    got = [p for p in rdpcap(str(cap.stop())) if p.haslayer(ICMP) and p[ICMP].id == 0x5D5D]
    assert got, f"the {transport} packet scapy built did not reach {target}"
    assert any(p[ICMP].type == 8 and p[IP].src.endswith(".99") for p in got)
    after = gk(wire_lab, "h1").call("vnet.list")
    rx = {v["vnet"]: v["rx_frames"] for v in after}
    assert rx[vnet] > {v["vnet"]: v["rx_frames"] for v in before}[vnet]
