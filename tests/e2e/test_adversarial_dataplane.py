"""The standing adversarial suite of the data plane (audit R2, R3, R18, R19): while two endpoints
ping each other across a VNET, a third host sends hypothesis-built garbage, truncated, oversized,
wrong-VNET, replayed and forged datagrams to UDP 1798, UDP 4500 and IP protocol 97 of one host.
Forwarding never stops, no worker dies or needs the loop guard, and every hostile datagram shows
up in the victim's counters (a drop by reason, a VARP message or a counted delivery). Every test
runs on both data paths: `auto` (the plain UDP VNETs on eBPF) and forced `userspace`."""

from __future__ import annotations

import ipaddress
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from softudc.lab import Lab
from softudc.lab.lab import METRICS_PORT
from softudc.security.keys import spi_for
from softudc.wire import VarpMessage, VarpOp, build_varp
from tests.e2e.conftest import Capture, create_vnet, endpoints, gk, ns_run, ping, wait_until

pytestmark = [pytest.mark.vnet, pytest.mark.adversarial]

SECRET = "a1" * 32
# The eBPF programs' drop counters (docs/ebpf.md), and which of them stand for a forwarder reason.
BPF_DROPS = ("dec_malformed", "dec_truncated", "dec_non_member", "dec_err_room")
BPF_REASONS = {"not_member_host": ("dec_non_member",)}
TRAFFIC, QUIET, RAW, SECURE, ABSENT = 10, 13, 14, 12, 99  # VNET ids; ABSENT exists on no host

# Runs in the attacker's namespace: reads "<kind> <port> <hex>" lines and sends each, answers
# "ok <sent> <failed>" to "sync". Kinds: u = UDP to the victim, r = raw protocol 97 to the
# victim, x = a whole IPv4 packet as given (IP_HDRINCL: the source address is ours to choose).
SENDER = r"""
import socket, sys
dst = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 97)
x = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = failed = 0
for line in sys.stdin:
    kind, port, data = (line.split() + ["", ""])[:3]
    if kind == "sync":
        print("ok", sent, failed, flush=True)
        continue
    payload = b"" if data == "-" else bytes.fromhex(data)
    try:
        if kind == "u":
            u.sendto(payload, (dst, int(port)))
        elif kind == "r":
            r.sendto(payload, (dst, 0))
        else:
            x.sendto(payload, (dst, 0))
        sent += 1
    except OSError:
        failed += 1
"""


class Attacker:
    """The sender process in the attacker's namespace, stopped by PID."""

    def __init__(self, netns: str, victim: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SENDER, victim],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.sent = 0

    def send(self, kind: str, port: int, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{kind} {port} {data.hex() or '-'}\n")

    def sync(self) -> int:
        """Wait until everything written is sent; returns how many datagrams left so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("sync\n")
        self.proc.stdin.flush()
        _, sent, _failed = self.proc.stdout.readline().split()
        self.sent = int(sent)
        return self.sent

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Victim:
    lab: Lab
    host: str = "h1"

    def counters(self) -> dict[str, Any]:
        return dict(gk(self.lab, self.host).call("counters"))

    def accounted(self) -> int:
        """Datagrams the victim has a record of that only the attacker sends: every drop by
        reason (the forwarder's and, for VNETs on the eBPF path, the tc programs'), every VARP
        message, every frame delivered on the VNETs without traffic (by either path)."""
        c = self.counters()
        delivered = sum(v["rx_datagrams"] for k, v in c["vnets"].items() if int(k) in (QUIET, RAW))
        delivered += sum(v["bpf"]["rx_frames"] for v in c["ebpf"]["vnets"] if "bpf" in v and v["vnet"] in (QUIET, RAW))
        bpf_drops = sum(c["ebpf"]["counters"].get(k, 0) for k in BPF_DROPS)
        return int(sum(c["drops"].values()) + bpf_drops + c["varp_rx"] + delivered)

    def dropped(self, reason: str) -> int:
        """Frames dropped for `reason` by the forwarder plus, on the eBPF path, by the programs."""
        c = self.counters()
        bpf = sum(c["ebpf"]["counters"].get(k, 0) for k in BPF_REASONS.get(reason, ()))
        return int(c["drops"].get(reason, 0) + bpf)

    def errors(self) -> dict[str, int]:
        return {k: v for k, v in self.counters()["drops"].items() if k.startswith("error_")}

    def health(self) -> dict[str, Any]:
        return dict(gk(self.lab, self.host).call("status")["dataplane"])

    def kernel_drops(self) -> int:
        """UDP datagrams the victim's kernel dropped (full receive buffer): never seen by us."""
        snmp = ns_run(self.lab.host(self.host).netns, "cat", "/proc/net/snmp").stdout.splitlines()
        udp = [line.split() for line in snmp if line.startswith("Udp:")]
        fields = dict(zip(udp[0][1:], udp[1][1:], strict=True))
        return int(fields["RcvbufErrors"]) + int(fields["InErrors"])


@pytest.fixture(params=["auto", "userspace"])
def datapath(request: pytest.FixtureRequest) -> str:
    """The lab gatekeepers' `dataplane.datapath`: every test runs on the default path (`auto`: the
    security-none UDP VNETs on eBPF) and on the forced userspace one."""
    return str(request.param)


@pytest.fixture
def lab(make_lab: Callable[..., Lab], datapath: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", datapath)
    lab = make_lab(hosts=3)
    create_vnet(lab, TRAFFIC, ["h1", "h2"])
    create_vnet(lab, QUIET, ["h1", "h2"])
    create_vnet(lab, RAW, ["h1", "h2"], transport="raw")
    for h in ("h1", "h2"):
        gk(lab, h).call("vnet.create", vnet=SECURE, security="conf",
                        keys={"send_epoch": 1, "secrets": {"1": SECRET}})
    endpoints(lab, {"t1": ("h1", TRAFFIC, "10.0.0.1/24"), "t2": ("h2", TRAFFIC, "10.0.0.2/24"),
                    "q1": ("h1", QUIET, "10.3.0.1/24"), "q2": ("h2", QUIET, "10.3.0.2/24"),
                    "r1": ("h1", RAW, "10.4.0.1/24"), "r2": ("h2", RAW, "10.4.0.2/24"),
                    "s1": ("h1", SECURE, "10.2.0.1/24"), "s2": ("h2", SECURE, "10.2.0.2/24")})
    for src, dst in (("t1", "10.0.0.2"), ("q1", "10.3.0.2"), ("r1", "10.4.0.2"), ("s1", "10.2.0.2")):
        assert ping(lab, src, dst, count=2).returncode == 0, f"{src} -> {dst} before any attack"
    plain = "ebpf" if datapath == "auto" else "userspace"
    paths = {v["vnet"]: v["path"] for v in gk(lab, "h1").call("counters")["ebpf"]["vnets"]}
    assert paths == {TRAFFIC: plain, QUIET: plain, RAW: "userspace", SECURE: "userspace"}, paths
    yield lab


@pytest.fixture
def attacker(lab: Lab) -> Iterator[Attacker]:
    a = Attacker(lab.host("h3").netns, lab.host("h1").underlay_ip)
    yield a
    a.stop()


# --- what the attacker sends -----------------------------------------------------------------

def tcp_frame(seq: int, data_offset: int = 5, flags: int = 0x10, payload: int = 600,
              dst: bytes = b"\x02\x00\x00\x00\x00\x02") -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + payload, 1, 0x4000, 64, 6, 0,
                     bytes([10, 3, 0, 99]), bytes([10, 3, 0, 1]))
    tcp = struct.pack("!HHIIBBHHH", 1, 2, seq, 0, data_offset << 4, flags, 100, 0, 0)
    return dst + b"\x02\x00\x00\x00\x00\x99\x08\x00" + ip + tcp + bytes(payload)


def frame_message(vnet: int, frame: bytes, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack("!HHH", 2, flags, version << 12 | vnet) + frame


def varp(op: int, vnet: int, mac: bytes, addr: str) -> bytes:
    """An unsigned VARP message; opcodes other than REQUEST (1) and ANNOUNCE (2) patched in."""
    msg = build_varp(VarpMessage(VarpOp(op if op in (1, 2) else 1), vnet, mac, ipaddress.IPv4Address(addr)))
    return msg[:2] + struct.pack("!H", op) + msg[4:]


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Near-miss TCP segments: valid ones with one or two header fields an attacker controls
    changed, sometimes cut short, sometimes far larger than the MTU."""
    f = tcp_frame(draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from([5, 5, 0, 1, 3, 4, 15])),
                  draw(st.sampled_from([0x10, 0x10, 0x18, 0x02, 0xFF])), draw(st.sampled_from([0, 100, 600, 1400])))
    what = draw(st.sampled_from(["as is", "as is", "cut", "oversize", "ihl"]))
    if what == "cut":
        return f[:draw(st.integers(0, len(f)))]
    if what == "oversize":
        return f + bytes(draw(st.integers(1, 8000)))
    if what == "ihl":
        return f[:14] + bytes([0x40 | draw(st.integers(0, 15))]) + f[15:]
    return f


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, int, list[bytes]]:
    """(kind, port, datagrams): one attack, often a batch of equal-sized datagrams, so the GRO
    and drain batching and the coalescing code see it."""
    vnet = draw(st.sampled_from([QUIET, QUIET, RAW, SECURE, ABSENT, 0, 0xFFF]))
    kind = draw(st.sampled_from(["frames", "frames", "raw", "varp", "esp", "garbage"]))
    count = draw(st.sampled_from([1, 1, 2, 4, 16]))
    if kind == "garbage":
        port = draw(st.sampled_from([1798, 4500]))
        return "u", port, [draw(st.binary(max_size=1600)) for _ in range(count)]
    if kind == "varp":
        op = draw(st.sampled_from([1, 2, 2, 3]))
        mac = draw(st.sampled_from([b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02", b"\x02" + bytes(5)]))
        addr = draw(st.sampled_from(["203.0.113.66", "10.100.0.13", "0.0.0.0"]))  # never the sender's own
        msg = varp(op, vnet, mac, addr)
        return "u", 1798, [msg[:draw(st.integers(0, len(msg)))] if draw(st.booleans()) else msg] * count
    if kind == "esp":
        spi = spi_for(vnet, 1) if draw(st.booleans()) and 1 <= vnet <= 4094 else draw(st.integers(0, 2**32 - 1))
        body = draw(st.binary(max_size=200))
        return "u", 4500, [struct.pack("!II", spi, seq) + body for seq in range(1, count + 1)]
    first = draw(frames())
    seqs = [int.from_bytes(first[38:42], "big") + i * max(1, len(first) - 54) for i in range(count)] \
        if len(first) >= 42 else [0] * count
    batch = [first[:38] + (s & 0xFFFFFFFF).to_bytes(4, "big") + first[42:] if len(first) >= 42 else first
             for s in seqs]
    if kind == "raw":
        return "r", 0, [struct.pack("!H", draw(st.sampled_from([3, 3, 0])) << 12 | vnet) + f for f in batch]
    flags = draw(st.sampled_from([0, 0, 1, 0x8000]))
    return "u", 1798, [frame_message(vnet, f, flags) for f in batch]


# --- the tests -------------------------------------------------------------------------------

def test_r2_the_audits_datagram_pair_against_the_real_socket(lab: Lab, attacker: Attacker) -> None:
    """Two equal-sized frame messages with TCP data offset 0 (ACK) to a VNET with offload: this
    ended fwd-udp for good, and the host kept saying ready while every VNET was blackholed."""
    victim = Victim(lab)
    for _ in range(3):
        for seq in (1000, 1600):
            attacker.send("u", 1798, frame_message(QUIET, tcp_frame(seq, data_offset=0)))
        attacker.sync()
    assert ping(lab, "t1", "10.0.0.2", count=3).returncode == 0
    assert ping(lab, "q1", "10.3.0.2", count=3).returncode == 0
    assert victim.errors() == {}
    assert victim.health() == {"workers": {"fwd-esp": "running", "fwd-raw": "running", "fwd-tap": "running",
                                           "fwd-udp": "running"}, "restarts": 0, "healthy": True}


def test_r2_r3_r18_r19_hostile_datagrams_while_traffic_flows(lab: Lab, attacker: Attacker,
                                                            captures: Callable[..., Capture]) -> None:
    victim = Victim(lab)
    h1, h2 = lab.host("h1"), lab.host("h2")
    # Real ESP packets from h2 to h1, to replay later with h2's own source address.
    cap = captures(h1.netns, "ul0", "esp", "udp dst port 4500")
    assert ping(lab, "s2", "10.2.0.1", count=3).returncode == 0
    recorded = _udp_payloads(cap.stop().read_bytes(), h2.underlay_ip)
    assert recorded, "no ESP packet captured to replay"
    background = subprocess.Popen(["ip", "netns", "exec", lab.endpoints["t1"].netns, "ping", "-n", "-i", "0.02",
                                   "-W", "1", "10.0.0.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
    before, kernel_before = victim.accounted(), victim.kernel_drops()
    sent_before = attacker.sync()
    try:
        @settings(max_examples=200, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(hostile(), min_size=1, max_size=4))
        def attack(attacks: list[tuple[str, int, list[bytes]]]) -> None:
            for kind, port, datagrams in attacks:
                for d in datagrams:
                    attacker.send(kind, port, d)
            attacker.sync()

        attack()
        # Replays: the captured packets again, from h2's own address, and a forged ANNOUNCE
        # pointing t2's MAC at a third address.
        for payload in recorded:
            attacker.send("x", 0, _udp_packet(h2.underlay_ip, h1.underlay_ip, 4500, payload))
        t2_mac = bytes.fromhex(lab.endpoints["t2"].mac.replace(":", ""))
        attacker.send("u", 1798, varp(2, TRAFFIC, t2_mac, "203.0.113.66"))
        sent = attacker.sync() - sent_before
        time.sleep(1.0)  # the ping goes on after the attack, so few of its requests are in flight at the stop
    finally:
        background.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
        out, _ = background.communicate(timeout=5)
    # Forwarding never stopped: the ping running through the whole attack lost next to nothing. The
    # requests still in flight when ping is stopped count as lost in its summary (a CI run under load:
    # 4 of 32 at 12-34 ms round trips), so losses are counted up to the last reply, which must be recent.
    m = re.search(r"(\d+) packets transmitted", out)
    assert m, out
    transmitted = int(m[1])
    replies = {int(n) for n in re.findall(r"icmp_seq=(\d+) ", out)}
    last = max(replies, default=0)
    assert transmitted >= 10 and last >= transmitted - 5 and last - len(replies) <= last * 0.1, out
    # Every hostile datagram is on record: dropped by reason, a VARP message, or delivered and
    # counted on a VNET that carries no other traffic (so far). The kernel's own drops are the
    # only excuse.
    assert wait_until(lambda: victim.accounted() - before >= sent - (victim.kernel_drops() - kernel_before),
                      timeout=5), (victim.accounted() - before, sent, victim.counters()["drops"])
    for src, dst in (("t1", "10.0.0.2"), ("q1", "10.3.0.2"), ("r1", "10.4.0.2"), ("s1", "10.2.0.2")):
        assert ping(lab, src, dst, count=2).returncode == 0, f"{src} -> {dst} after the attack"
    drops = victim.counters()["drops"]
    assert drops.get("esp_replay", 0) + drops.get("esp_auth_failed", 0) >= len(recorded), drops
    assert victim.counters()["varp"].get("announce_not_from_addr", 0) >= 1
    assert victim.errors() == {}  # nothing needed the loop guard
    health = victim.health()
    assert health["healthy"] and health["restarts"] == 0, health
    text = ns_run(lab.mgmt_ns, sys.executable, "-c", SCRAPE, f"http://{h1.mgmt_ip}:{METRICS_PORT}/metrics").stdout
    assert 'softudc_gatekeeper_worker_restarts_total{host="h1",worker="fwd-udp"} 0.0' in text
    assert re.search(r'softudc_dataplane_drops_total\{host="h1",path="udp",reason="[a-z_]+"\} [1-9]', text)


SCRAPE = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def _udp_payloads(pcap: bytes, src: str) -> list[bytes]:
    """UDP payloads `src` sent, from a pcap (Ethernet link type): the bytes as they were sent."""
    out, off = [], 24
    src_raw = bytes(map(int, src.split(".")))
    while off + 16 <= len(pcap):
        incl = struct.unpack_from("<I", pcap, off + 8)[0]
        pkt = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) >= 14 + 20 + 8 and pkt[12:14] == b"\x08\x00" and pkt[14 + 9] == 17 and pkt[26:30] == src_raw:
            ihl = (pkt[14] & 0x0F) * 4
            out.append(pkt[14 + ihl + 8:])
    return out[:20]


def _udp_packet(src: str, dst: str, port: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet with the source address we choose (the kernel fills id and checksum)."""
    udp = struct.pack("!HHHH", port, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return ip + udp


def test_r18_a_vnet_with_members_refuses_frames_and_varp_from_other_hosts(lab: Lab, attacker: Attacker) -> None:
    """Member lists (from the manager, or `vnet.create members=[...]`): a host that is not a member
    can neither put frames on the VNET nor announce MACs on it, even announcing itself."""
    h1, h2, h3 = (lab.host(h) for h in ("h1", "h2", "h3"))
    create_vnet(lab, 15, ["h1", "h2"], members=[h1.underlay_ip, h2.underlay_ip])
    endpoints(lab, {"m1": ("h1", 15, "10.5.0.1/24"), "m2": ("h2", 15, "10.5.0.2/24")})
    victim = Victim(lab)
    m2_mac = bytes.fromhex(lab.endpoints["m2"].mac.replace(":", ""))
    frame = bytes.fromhex(lab.endpoints["m1"].mac.replace(":", "")) + tcp_frame(1, payload=100)[6:]
    attacker.send("u", 1798, frame_message(15, frame))
    attacker.send("u", 1798, varp(2, 15, m2_mac, h3.underlay_ip))
    attacker.sync()
    assert wait_until(lambda: victim.dropped("not_member_host") == 1), victim.counters()
    assert wait_until(lambda: victim.counters()["varp"].get("not_member_host", 0) == 1)
    assert ping(lab, "m1", "10.5.0.2", count=2).returncode == 0
    assert not any(e["addr"] == h3.underlay_ip for e in gk(lab, "h1").call("varp.cache") if e["vnet"] == 15)
