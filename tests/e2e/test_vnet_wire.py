"""What we put on the underlay is read by independent tools (scapy, tshark), packets that scapy
builds are forwarded by our data plane, and both data paths put the same frame on the wire alike.

The module's lab runs once per data path (`auto`: the UDP VNET on eBPF; forced `userspace`); the
last test mixes them: an eBPF host and a userspace host send the same inner frame to a third host,
and scapy and tshark decode the two datagrams to the same fields."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.contrib.etherip import EtherIP
from scapy.fields import ShortEnumField, XShortField
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers
from scapy.utils import rdpcap

from softudc.lab import Lab
from softudc.lab import lab as lab_mod
from tests.e2e.conftest import Capture, create_vnet, endpoints, gk, module_lab, ns_run, ping, wait_until

pytestmark = pytest.mark.vnet
LUA = Path(__file__).resolve().parents[2] / "configs" / "wireshark" / "softudc.lua"
UDP_VNET, RAW_VNET = 10, 11


class SoftUDC(Packet):
    """The 4-byte message header on UDP 1798 (DESIGN.md, "Wire decisions"); a frame message (id 2)
    carries EtherIP, whose 12 reserved bits hold the VNET id."""

    name = "SoftUDC"
    fields_desc = [ShortEnumField("id", 2, {1: "VARP", 2: "frame", 3: "vnetd relay"}), XShortField("flags", 0)]


bind_layers(UDP, SoftUDC, dport=1798)
bind_layers(SoftUDC, EtherIP, id=2)


def vnet_path(lab: Lab, host: str, vnet: int) -> str:
    return str({v["vnet"]: v["path"] for v in gk(lab, host).call("counters")["ebpf"]["vnets"]}[vnet])


@pytest.fixture(scope="module", params=["auto", "userspace"])
def wire_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One lab per data path, shared by the module's tests: `auto` puts the UDP VNET on eBPF,
    `userspace` pins the forwarder; the raw VNET is in userspace either way."""
    with module_lab("w", hosts=2, datapath=request.param) as lab:
        create_vnet(lab, UDP_VNET, transport="udp")
        create_vnet(lab, RAW_VNET, transport="raw")
        endpoints(lab, {"u1": ("h1", UDP_VNET, "10.0.0.1/24"), "u2": ("h2", UDP_VNET, "10.0.0.2/24"),
                        "r1": ("h1", RAW_VNET, "10.1.0.1/24"), "r2": ("h2", RAW_VNET, "10.1.0.2/24")})
        want = "ebpf" if request.param == "auto" else "userspace"
        assert [vnet_path(lab, h, UDP_VNET) for h in ("h1", "h2")] == [want, want]
        assert [vnet_path(lab, h, RAW_VNET) for h in ("h1", "h2")] == ["userspace", "userspace"]
        yield lab


def tshark(pcap: Path, *args: str) -> list[str]:
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-X", f"lua_script:{LUA}", "-d", "udp.port==1798,softudc",
                          *args], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_scapy_and_tshark_decode_the_underlay(wire_lab: Lab, captures: Callable[..., Capture]) -> None:
    cap = captures(wire_lab.host("h1").netns, "ul0", "underlay", "udp port 1798 or ip proto 97")
    assert ping(wire_lab, "u1", "10.0.0.2").returncode == 0
    assert ping(wire_lab, "r1", "10.1.0.2").returncode == 0
    pcap = cap.stop()
    packets = rdpcap(str(pcap))

    raw = [p for p in packets if p.haslayer(IP) and p[IP].proto == 97]
    assert raw, "no raw-transport packet captured"
    icmp = [p for p in raw if p.haslayer(EtherIP) and p.haslayer(ICMP)]
    assert icmp, "scapy found no EtherIP with inner ICMP in the raw transport"
    assert {p[EtherIP].version for p in icmp} == {3}
    assert {p[EtherIP].reserved for p in icmp} == {RAW_VNET}
    assert {p[ICMP].type for p in icmp} == {0, 8}
    udp = [p for p in packets if p.haslayer(SoftUDC) and p.haslayer(ICMP)]
    assert udp, "scapy found no SoftUDC frame message with inner ICMP in the UDP transport"
    assert {(p[UDP].sport, p[UDP].dport, p[SoftUDC].id, p[SoftUDC].flags) for p in udp} == {(1798, 1798, 2, 0)}
    assert {(p[EtherIP].version, p[EtherIP].reserved) for p in udp} == {(3, UDP_VNET)}
    assert {p[ICMP].type for p in udp} == {0, 8}  # h1 sent the requests and received the replies

    raw_rows = tshark(pcap, "-Y", "etherip && icmp && !udp", "-T", "fields", "-e", "ip.proto", "-e", "icmp.type")
    assert raw_rows and all(r.split("\t")[0].startswith("97") for r in raw_rows), raw_rows
    assert {r.split("\t")[1] for r in raw_rows} == {"0", "8"}
    udp_rows = tshark(pcap, "-Y", "softudc.id == 2 && etherip && icmp",
                      "-T", "fields", "-e", "softudc.vnet", "-e", "etherip.ver", "-e", "icmp.type")
    assert udp_rows, "tshark did not dissect the UDP transport as SoftUDC + EtherIP + ICMP"
    assert {tuple(r.split("\t")[:2]) for r in udp_rows} == {(str(UDP_VNET), "3")}
    assert {r.split("\t")[2] for r in udp_rows} == {"0", "8"}


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
                         [("udp", UDP_VNET, "u1", "10.0.0.1"), ("raw", RAW_VNET, "r1", "10.1.0.1")])
def test_dataplane_forwards_what_scapy_builds(wire_lab: Lab, captures: Callable[..., Capture], transport: str,
                                              vnet: int, target: str, inner_dst: str) -> None:
    ep = wire_lab.endpoints[target]
    cap = captures(ep.netns, "eth0", f"scapy-{transport}", "icmp")
    h1 = gk(wire_lab, "h1")

    def rx_frames() -> int:
        """VNET frames h1 delivered (vnet.list folds in what the eBPF programs delivered)."""
        return int({v["vnet"]: v["rx_frames"] for v in h1.call("vnet.list")}[vnet])

    def bpf_decapsulated() -> int:
        """Frames BPF delivered into this VNET on h1 (other VNETs of the shared lab may have traffic)."""
        entry = {v["vnet"]: v for v in h1.call("counters")["ebpf"]["vnets"]}.get(vnet, {})
        return int(entry.get("bpf", {}).get("rx_frames", 0))

    before, bpf_before = rx_frames(), bpf_decapsulated()
    ns_run(wire_lab.host("h2").netns, sys.executable, "-c", SCAPY_SEND, wire_lab.host("h1").underlay_ip,
           transport, str(vnet), ep.mac, inner_dst)
    time.sleep(0.5)
    got = [p for p in rdpcap(str(cap.stop())) if p.haslayer(ICMP) and p[ICMP].id == 0x5D5D]
    assert got, f"the {transport} packet scapy built did not reach {target}"
    assert any(p[ICMP].type == 8 and p[IP].src.endswith(".99") for p in got)
    assert wait_until(lambda: rx_frames() > before, timeout=3), "h1 counted no frame received on the VNET"
    # The path the VNET runs took it: decapsulated in BPF on eBPF, by the forwarder otherwise.
    on_ebpf = vnet_path(wire_lab, "h1", vnet) == "ebpf"
    assert (bpf_decapsulated() > bpf_before) == on_ebpf, (vnet_path(wire_lab, "h1", vnet), bpf_decapsulated())


# --- an eBPF host and a userspace host: the same frame, decoded alike ---------------------------

MARK = 0x5D5E
INJECT = """
import sys
from scapy.all import conf, sendp, Raw
from scapy.layers.inet import IP, ICMP
from scapy.layers.l2 import Ether
conf.verb = 0
sendp(Ether(src="02:00:00:00:5d:5e", dst=sys.argv[1]) / IP(src="10.0.0.99", dst="10.0.0.3", id=7, ttl=33)
      / ICMP(type=8, id=int(sys.argv[2]), seq=1) / Raw(b"the-same-frame-from-both-paths"), iface="eth0")
"""
# What differs by design between the two copies: the sender's addresses, so the IP checksum, and the
# UDP checksum (optional in IPv4: BPF leaves it 0, the kernel's socket fills it in). The IP id is 0
# on both (DF set, and the forwarder's socket is not connected).
BY_DESIGN = {"eth.src", "ip.src", "ip.chksum", "udp.chksum"}
TSHARK_FIELDS = ["frame.len", "eth.type", "ip.version", "ip.hdr_len", "ip.dsfield", "ip.len", "ip.flags",
                 "ip.frag_offset", "ip.ttl", "ip.proto", "ip.dst", "ip.src", "udp.srcport", "udp.dstport",
                 "udp.length", "softudc.id", "softudc.opcode", "softudc.vnet", "etherip.ver", "eth.dst", "eth.src",
                 "icmp.type", "icmp.ident", "icmp.seq", "data.data"]


def scapy_fields(p: Packet) -> dict[str, Any]:
    """Every field scapy decodes, outer IPv4 to the inner frame's bytes."""
    ip, udp, hdr, eip = p[IP], p[UDP], p[SoftUDC], p[EtherIP]
    inner = eip.payload
    assert isinstance(inner, Ether), p.summary()
    return {"eth.src": p[Ether].src, "eth.dst": p[Ether].dst, "len": len(p),
            **{f"ip.{f}": ip.getfieldval(f) for f in ("version", "ihl", "tos", "len", "id", "frag", "ttl", "proto",
                                                      "chksum", "src", "dst")},
            "ip.flags": int(ip.flags),
            **{f"udp.{f}": udp.getfieldval(f) for f in ("sport", "dport", "len", "chksum")},
            "hdr.id": hdr.id, "hdr.flags": hdr.flags, "etherip.version": eip.version, "etherip.vnet": eip.reserved,
            "inner.dst": inner.dst, "inner.src": inner.src, "inner.type": inner.type, "inner.bytes": bytes(inner),
            "inner.icmp": (inner[ICMP].type, inner[ICMP].id, inner[ICMP].seq)}


def tshark_fields(pcap: Path) -> dict[str, dict[str, list[str]]]:
    """tshark's decode of each marked datagram, by the outer source address: field -> its values
    (outer first, then the inner frame's, for eth.* and ip.*)."""
    args = ["-Y", f"softudc.id == 2 && icmp.ident == {MARK}", "-T", "json"]
    for f in TSHARK_FIELDS:
        args += ["-e", f]
    out = json.loads("\n".join(tshark(pcap, *args)))
    decoded: dict[str, dict[str, list[str]]] = {}
    for pkt in out:
        layers = pkt["_source"]["layers"]
        decoded.setdefault(layers["ip.src"][0], layers)
    return decoded


def mixed_lab(make_lab: Callable[..., Lab], monkeypatch: pytest.MonkeyPatch, paths: dict[str, str],
              hosts: int) -> Lab:
    """A lab whose gatekeepers run `dataplane.datapath` = paths[host] (else `auto`)."""
    monkeypatch.delenv("SOFTUDC_LAB_DATAPATH", raising=False)  # the config lines below set it instead
    plain = lab_mod.gatekeeper_config
    monkeypatch.setattr(lab_mod, "gatekeeper_config", lambda lab, host: plain(lab, host).replace(
        "[dataplane]\n", f'[dataplane]\ndatapath = "{paths.get(host.name, "auto")}"\n'))
    return make_lab(hosts=hosts)


def test_an_ebpf_host_and_a_userspace_host_put_a_frame_on_the_wire_alike(
        make_lab: Callable[..., Lab], monkeypatch: pytest.MonkeyPatch, captures: Callable[..., Capture]) -> None:
    """h1 (eBPF) and h2 (userspace) each send the same inner frame to e3 on h3; captured on h3's
    underlay, scapy and tshark decode the two datagrams to the same fields but for the sender's
    addresses and the checksums."""
    lab = mixed_lab(make_lab, monkeypatch, {"h2": "userspace"}, hosts=3)
    create_vnet(lab, UDP_VNET)
    endpoints(lab, {"e1": ("h1", UDP_VNET, "10.0.0.1/24"), "e2": ("h2", UDP_VNET, "10.0.0.2/24"),
                    "e3": ("h3", UDP_VNET, "10.0.0.3/24")})
    assert [vnet_path(lab, h, UDP_VNET) for h in ("h1", "h2", "h3")] == ["ebpf", "userspace", "ebpf"]
    for src in ("e1", "e2"):  # both senders resolve e3's MAC (VARP); h1 copies it into its FDB map
        assert ping(lab, src, "10.0.0.3", count=2).returncode == 0, src
    time.sleep(1.0)  # a VARP tick (0.25 s) puts the resolved entry into ebs_fdb
    h1, h2, h3 = (lab.host(h) for h in ("h1", "h2", "h3"))
    cap = captures(h3.netns, "ul0", "mixed", "udp port 1798")
    enc_before = gk(lab, "h1").call("counters")["ebpf"]["counters"]["enc_unicast"]
    tx_before = {v["vnet"]: v["tx_datagrams"] for v in gk(lab, "h2").call("vnet.list")}[UDP_VNET]
    e3_mac = lab.endpoints["e3"].mac
    for src in ("e1", "e2"):
        ns_run(lab.endpoints[src].netns, sys.executable, "-c", INJECT, e3_mac, str(MARK))
    time.sleep(0.5)
    pcap = cap.stop()
    # Which path sent each copy: h1's in BPF (enc_unicast), h2's by the forwarder (its datagrams).
    assert gk(lab, "h1").call("counters")["ebpf"]["counters"]["enc_unicast"] > enc_before
    assert {v["vnet"]: v["tx_datagrams"] for v in gk(lab, "h2").call("vnet.list")}[UDP_VNET] > tx_before

    marked = [p for p in rdpcap(str(pcap)) if p.haslayer(SoftUDC) and p.haslayer(ICMP) and p[ICMP].id == MARK]
    by_sender = {p[IP].src: scapy_fields(p) for p in marked}
    assert sorted(by_sender) == sorted([h1.underlay_ip, h2.underlay_ip]) and len(marked) == 2, \
        [p.summary() for p in marked]
    ebpf, user = by_sender[h1.underlay_ip], by_sender[h2.underlay_ip]
    differ = {k for k in ebpf if ebpf[k] != user[k]}
    print("eBPF vs userspace copy, differing by design:", {k: (ebpf[k], user[k]) for k in sorted(differ)})
    assert differ <= BY_DESIGN, {k: (ebpf[k], user[k]) for k in differ - BY_DESIGN}
    assert (ebpf["udp.sport"], ebpf["udp.dport"], ebpf["hdr.id"], ebpf["etherip.version"], ebpf["etherip.vnet"],
            ebpf["inner.dst"], ebpf["inner.icmp"]) == (1798, 1798, 2, 3, UDP_VNET, e3_mac, (8, MARK, 1))

    rows = tshark_fields(pcap)
    assert sorted(rows) == sorted([h1.underlay_ip, h2.underlay_ip]), rows
    t_ebpf, t_user = rows[h1.underlay_ip], rows[h2.underlay_ip]
    assert set(t_ebpf) == set(t_user) == set(TSHARK_FIELDS), (set(TSHARK_FIELDS) ^ set(t_ebpf))
    for f in TSHARK_FIELDS:
        if f in ("eth.src", "ip.src"):  # the outer ones differ by design: compare the inner frame's
            assert t_ebpf[f][1:] == t_user[f][1:] and len(t_ebpf[f]) == 2, (f, t_ebpf[f], t_user[f])
        else:
            assert t_ebpf[f] == t_user[f], (f, t_ebpf[f], t_user[f])
    assert (t_ebpf["softudc.vnet"], t_ebpf["etherip.ver"], t_ebpf["udp.dstport"]) == ([str(UDP_VNET)], ["3"], ["1798"])
