"""Secured VNETs on real hosts: independent decryption (scapy), tampering, replay, old and foreign
keys, a host without the key, key rotation under a 10 ms ping, and authenticated VARP."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.contrib.etherip import EtherIP
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from softudc.lab import Lab
from softudc.security.keys import derive_esp_key, parse_spi
from tests.e2e.conftest import Capture, endpoints, gk, ns_run, ping, wait_until

pytestmark = pytest.mark.esp

SECRET_A, SECRET_B = "a1" * 32, "b2" * 32
PATTERN = "5d5df00dcafe"  # ping -p: bytes that must never appear in clear on a conf VNET


def keys(secret: str = SECRET_A, epoch: int = 1, **more: str) -> dict[str, object]:
    return {"send_epoch": epoch, "secrets": {str(epoch): secret, **more}}


def secure_lab(make_lab: Callable[..., Lab], levels: dict[int, str], hosts: int = 2,
               secret_of: Callable[[str], str] = lambda h: SECRET_A, **spec: object) -> Lab:
    lab = make_lab(hosts=hosts, **spec)
    for h in lab.hosts:
        for vnet, level in levels.items():
            gk(lab, h.name).call("vnet.create", vnet=vnet, security=level, keys=keys(secret_of(h.name)))
    return lab


def drops(lab: Lab, host: str) -> dict[str, int]:
    return dict(gk(lab, host).call("counters")["drops"])


def scapy_sa(packet: IP, level: str, secret: str) -> SecurityAssociation:
    """What an independent implementation needs: the SPI and the key (ours derive per sender)."""
    spi = packet[ESP].spi
    vnet, epoch = parse_spi(spi)
    k = derive_esp_key(bytes.fromhex(secret), vnet, epoch, packet[IP].src, level)  # type: ignore[arg-type]
    algo = "AES-GCM" if level == "conf" else "AES-NULL-GMAC"
    return SecurityAssociation(ESP, spi=spi, crypt_algo=algo, crypt_key=k.key + k.salt,  # type: ignore[no-untyped-call]
                               esn_en=True, esn=0, nat_t_header=UDP(sport=4500, dport=4500))


def esp_packets(pcap: Path) -> list[IP]:
    out = []
    for p in rdpcap(str(pcap)):
        if p.haslayer(UDP) and p[UDP].dport == 4500:
            ip = IP(bytes(p[IP]))
            ip[UDP].decode_payload_as(ESP)
            out.append(ip)
    return out


def test_scapy_decrypts_conf_and_verifies_auth(make_lab: Callable[..., Lab],
                                              captures: Callable[..., Capture]) -> None:
    lab = secure_lab(make_lab, {10: "conf", 11: "auth"})
    endpoints(lab, {"c1": ("h1", 10, "10.0.0.1/24"), "c2": ("h2", 10, "10.0.0.2/24"),
                    "a1": ("h1", 11, "10.1.0.1/24"), "a2": ("h2", 11, "10.1.0.2/24")})
    cap = captures(lab.host("h1").netns, "ul0", "underlay", "udp port 4500")
    for src, dst in (("c1", "10.0.0.2"), ("a1", "10.1.0.2")):
        result = ns_run(lab.endpoints[src].netns, "ping", "-n", "-c", "3", "-i", "0.2", "-p", PATTERN, dst,
                        check=False)
        assert result.returncode == 0, result.stdout
    pcap = cap.stop()
    raw = pcap.read_bytes()
    packets = esp_packets(pcap)
    conf = [p for p in packets if parse_spi(p[ESP].spi)[0] == 10]
    auth = [p for p in packets if parse_spi(p[ESP].spi)[0] == 11]
    assert conf and auth
    pattern = bytes.fromhex(PATTERN)
    # The known payload is on the wire in clear only for the auth VNET (before scapy, which
    # decrypts in place).
    assert pattern not in b"".join(bytes(p) for p in conf)
    assert pattern in b"".join(bytes(p) for p in auth)
    icmp_seen = 0
    for p in conf:
        plain = scapy_sa(p, "conf", SECRET_A).decrypt(p)  # type: ignore[no-untyped-call]
        assert plain[IP].proto == 97
        inner = EtherIP(bytes(plain[IP].payload))
        assert inner.version == 3 and inner.reserved == 10
        icmp_seen += inner.haslayer(ICMP)
    assert icmp_seen >= 6, "scapy found no inner ICMP in the conf packets"
    for p in auth:
        scapy_sa(p, "auth", SECRET_A).decrypt(p)  # type: ignore[no-untyped-call]  # raises unless the ICV verifies
    assert pattern in raw


INJECT = """
import socket, sys
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for hexpkt in sys.argv[2:]:
    s.sendto(bytes.fromhex(hexpkt), (dst, 4500))
"""


def test_tampered_replayed_old_and_foreign_packets_are_dropped(make_lab: Callable[..., Lab],
                                                               captures: Callable[..., Capture]) -> None:
    from gatekeeper.vnet.esp_sa import SecurityAssociations
    from softudc.security.keys import VnetKeys

    lab = secure_lab(make_lab, {10: "conf"})
    endpoints(lab, {"c1": ("h1", 10, "10.0.0.1/24"), "c2": ("h2", 10, "10.0.0.2/24")})
    under = captures(lab.host("h1").netns, "ul0", "genuine", "udp port 4500 and src host 10.100.0.12")
    assert ping(lab, "c2", "10.0.0.1", count=2).returncode == 0
    genuine = [bytes(p[UDP].payload) for p in esp_packets(under.stop())]
    assert genuine
    h2 = lab.host("h2").underlay_ip

    def forged(secret: str, epoch: int, seq_start: int = 10_000) -> bytes:
        sa = SecurityAssociations(h2)
        sa.set_keys(10, VnetKeys("conf", {epoch: bytes.fromhex(secret)}, epoch))
        sa._out[10].next_seq, sa._out[10].reserved = seq_start, seq_start  # a number the window has not seen
        frame = bytes(Ether(dst=lab.endpoints["c1"].mac, src="02:00:00:00:66:66") / IP(src="10.0.0.66",
                      dst="10.0.0.1") / ICMP(id=0x6666))
        return bytes(sa.seal(10, b"\x30\x0a" + frame))

    # A valid packet with a fresh sequence number and one bit flipped in the ciphertext.
    flipped = bytearray(forged(SECRET_A, 1))
    flipped[30] ^= 0x40
    watch = captures(lab.endpoints["c1"].netns, "eth0", "endpoint", "icmp")
    before = drops(lab, "h1")
    packets = {
        "esp_auth_failed": [bytes(flipped), forged(SECRET_B, 1)],  # tampered; foreign key
        "esp_replay": [genuine[0]],  # a genuine packet, again
        "esp_unknown_spi": [forged(SECRET_A, 7)],  # an epoch this VNET does not hold (retired or never)
        "esp_malformed": [b"\x00" * 40],  # garbage on port 4500
    }
    ns_run(lab.host("h2").netns, sys.executable, "-c", INJECT, lab.host("h1").underlay_ip,
           *[p.hex() for group in packets.values() for p in group])

    def delta() -> dict[str, int]:
        now = drops(lab, "h1")
        return {k: now.get(k, 0) - before.get(k, 0) for k in packets}

    assert wait_until(lambda: delta() == {k: len(v) for k, v in packets.items()}, timeout=5), delta()
    time.sleep(0.3)
    seen = [p for p in rdpcap(str(watch.stop())) if p.haslayer(ICMP) and p[ICMP].id == 0x6666]
    assert not seen, "an injected frame reached the endpoint"
    assert ping(lab, "c2", "10.0.0.1", count=2).returncode == 0  # and the genuine path still works


def test_a_host_without_the_key_receives_nothing_readable(make_lab: Callable[..., Lab],
                                                          captures: Callable[..., Capture]) -> None:
    lab = secure_lab(make_lab, {10: "conf"}, hosts=3, secret_of=lambda h: SECRET_B if h == "h3" else SECRET_A)
    endpoints(lab, {"c1": ("h1", 10, "10.0.0.1/24"), "c2": ("h2", 10, "10.0.0.2/24"),
                    "c3": ("h3", 10, "10.0.0.3/24")})
    watch = captures(lab.endpoints["c3"].netns, "eth0", "outsider")
    assert ping(lab, "c1", "10.0.0.2", count=3).returncode == 0
    assert ping(lab, "c1", "10.0.0.3", count=2, interval=0.2).returncode != 0
    time.sleep(0.3)
    frames = rdpcap(str(watch.stop()))
    foreign = [p for p in frames if p[Ether].src.lower() != lab.endpoints["c3"].mac]
    assert not foreign, f"the host without the key delivered {len(foreign)} frame(s)"
    assert drops(lab, "h3").get("esp_auth_failed", 0) >= 1


def test_key_rotation_loses_no_pings(make_lab: Callable[..., Lab]) -> None:
    lab = secure_lab(make_lab, {10: "conf"})
    endpoints(lab, {"c1": ("h1", 10, "10.0.0.1/24"), "c2": ("h2", 10, "10.0.0.2/24")})
    assert ping(lab, "c1", "10.0.0.2", count=1).returncode == 0
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.endpoints["c1"].netns, "ping", "-n", "-i", "0.01",
                               "-c", "400", "-W", "1", "10.0.0.2"], stdout=subprocess.PIPE, text=True)
    both = {"1": SECRET_A, "2": SECRET_B}
    time.sleep(0.8)
    for h in lab.hosts:  # 1: every host learns epoch 2, still sending with 1
        gk(lab, h.name).call("vnet.keys", vnet=10, keys={"send_epoch": 1, "secrets": both})
    time.sleep(0.5)
    for h in lab.hosts:  # 2: every host sends with epoch 2
        gk(lab, h.name).call("vnet.keys", vnet=10, keys={"send_epoch": 2, "secrets": both})
    time.sleep(0.5)
    for h in lab.hosts:  # 3: epoch 1 is retired
        gk(lab, h.name).call("vnet.keys", vnet=10, keys={"send_epoch": 2, "secrets": {"2": SECRET_B}})
    out, _ = pinger.communicate(timeout=30)
    received = int(re.search(r"(\d+) received", out).group(1))  # type: ignore[union-attr]
    assert received == 400, out[-300:]
    assert gk(lab, "h1").call("vnet.list")[0]["spi"] == "0x100a0002"


def test_varp_forgeries_and_stale_replays_change_nothing(make_lab: Callable[..., Lab],
                                                        captures: Callable[..., Capture]) -> None:
    import ipaddress

    from softudc.wire import VarpMessage, VarpOp, VarpTrailer, build_varp

    lab = secure_lab(make_lab, {10: "conf"}, hosts=3, security={"varp_window": 1.5})
    cap = captures(lab.host("h1").netns, "ul0", "varp", "udp port 1798")
    endpoints(lab, {"c1": ("h1", 10, "10.0.0.1/24"), "c2": ("h2", 10, "10.0.0.2/24")})
    assert ping(lab, "c1", "10.0.0.2", count=1).returncode == 0
    time.sleep(0.2)
    announces = [bytes(p[UDP].payload) for p in rdpcap(str(cap.stop()))
                 if p.haslayer(UDP) and bytes(p[UDP].payload)[:4] == b"\x00\x01\x00\x02"
                 and p[IP].src == lab.host("h2").underlay_ip]
    assert announces, "no genuine ANNOUNCE from h2 captured"
    c2_mac = bytes.fromhex(lab.endpoints["c2"].mac.replace(":", ""))

    def entry() -> object:
        return [e for e in gk(lab, "h1").call("varp.cache") if e["mac"] == lab.endpoints["c2"].mac]

    before = entry()
    h3 = lab.host("h3")
    claim = VarpMessage(VarpOp.ANNOUNCE, 10, c2_mac, ipaddress.IPv4Address(h3.underlay_ip))
    unsigned = build_varp(claim)
    bad_mac = build_varp(VarpMessage(claim.op, claim.vnet, claim.vmac, claim.addr,
                                     VarpTrailer(0x100A0001, time.time_ns(), bytes(16))))
    send = ("import socket, sys; s = socket.socket(2, 2)\n"
            "for m in sys.argv[2:]: s.sendto(bytes.fromhex(m), (sys.argv[1], 1798))")

    def counters() -> dict[str, int]:
        return dict(gk(lab, "h1").call("counters")["varp"])

    ns_run(h3.netns, sys.executable, "-c", send, lab.host("h1").underlay_ip, unsigned.hex(), bad_mac.hex())
    assert wait_until(lambda: counters().get("unauthenticated", 0) >= 1 and counters().get("bad_mac", 0) >= 1)
    assert entry() == before or all(e["addr"] == lab.host("h2").underlay_ip for e in entry())  # type: ignore[attr-defined]
    time.sleep(2.0)  # past the 1.5 s window
    ns_run(lab.host("h2").netns, sys.executable, "-c", send, lab.host("h1").underlay_ip, announces[-1].hex())
    assert wait_until(lambda: counters().get("stale", 0) >= 1)
    assert all(e["addr"] == lab.host("h2").underlay_ip for e in entry())  # type: ignore[attr-defined]
