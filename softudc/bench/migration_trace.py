"""Where a live migration's ping gap goes, from one clock: a capture on the underlay segment.

`softudc bench migration` captures the segment bridge (every host's underlay port is on it) while
it migrates. Per migration, `timeline()` places on the gap's time axis (0 = the pinger's last reply
before its longest gap, from ping's own `-D` stamps; tcpdump stamps on the same machine's clock):

- `announced_by_guest_ms`: the guest's first self-announcement seen on the segment (QEMU's RARP
  after the switchover, or the guest's gratuitous ARP), flooded by its new host over a VNET;
- `varp_announce_ms`: the new host's first VARP ANNOUNCE for the VM's MAC (VNET only);
- `redirected_ms`: the first echo request sent to the new host (VNET only: the pinger's host updated
  its FDB; a capture of the segment bridge does not show which port a plain-L2 frame leaves by);
- `first_reply_ms`: the first echo reply on the segment after the gap's start;
- `reply_after_guest_announce_ms`: from the guest's self-announcement to that reply (neither the
  downtime nor the ping's phase before the switchover in it: the fairest comparison of the modes);
- `requests_to_old_host_after_guest_announce` (VNET): echo requests still sent to the old host after
  the guest announced itself, i.e. what the pinger's host's FDB costs in pings.

Events are looked for between the gap's start and shortly after its end; when the guest's
self-announcement is not among them, the longest gap was not the switchover's (a stall while
copying) and only `gap_at_switchover: false` is given. A missing event is None. Only classic pcap
files (tcpdump -w) are read; nothing here raises on a frame it cannot parse: such frames are skipped
(the capture is ours, but it is still bytes off a wire).
"""

from __future__ import annotations

import ipaddress
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from softudc.wire.errors import WireError
from softudc.wire.header import VNET_PORT, MsgId
from softudc.wire.varp import VarpOp, parse_varp

ETH_P_IP, ETH_P_ARP, ETH_P_RARP = 0x0800, 0x0806, 0x8035
CAPTURE_FILTER = f"udp port {VNET_PORT} or icmp or arp or rarp"
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
SLACK = 0.1  # s after the gap's end in which its events are still looked for (an ANNOUNCE may trail)
MAX_RECORD = 1 << 18  # larger than any snap length we ask for: a bigger record means a corrupt file


class TraceError(RuntimeError):
    """The capture cannot be read (not a pcap file, cut header)."""


@dataclass(frozen=True, slots=True)
class Event:
    t: float  # seconds since the epoch
    kind: str  # "self_announce", "varp_announce", "echo_request", "echo_reply"
    outer_src: str | None = None  # underlay addresses of a VNET datagram; None on plain L2
    outer_dst: str | None = None


def read_pcap(data: bytes) -> Iterator[tuple[float, bytes]]:
    """(timestamp, frame) records of a classic pcap file; a truncated last record ends the file."""
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        raise TraceError("not a pcap capture (tcpdump -w writes one); was tcpdump installed and did it start?")
    order, unit = _PCAP_MAGIC[data[:4]]
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    if linktype != 1:
        raise TraceError(f"pcap link type {linktype}: only Ethernet (1) captures are read")
    rec = struct.Struct(order + "IIII")
    off = 24
    while off + rec.size <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += rec.size
        if incl > MAX_RECORD or off + incl > len(data):
            return
        yield sec + frac * unit, data[off:off + incl]
        off += incl


def classify(t: float, frame: bytes, vm_mac: bytes, vm_ip: str) -> Event | None:
    """What a frame on the segment says about the VM, if anything."""
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_P_IP and len(frame) >= 34 and frame[23] == 17:
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        if len(frame) >= udp + 12 and int.from_bytes(frame[udp + 2:udp + 4], "big") == VNET_PORT:
            src, dst = str(ipaddress.IPv4Address(frame[26:30])), str(ipaddress.IPv4Address(frame[30:34]))
            return _vnet_message(t, frame[udp + 8:], src, dst, vm_mac, vm_ip)
    kind = _inner_kind(frame, vm_mac, vm_ip)
    return Event(t, kind) if kind else None


def _vnet_message(t: float, msg: bytes, src: str, dst: str, vm_mac: bytes, vm_ip: str) -> Event | None:
    msg_id = int.from_bytes(msg[0:2], "big")
    if msg_id == MsgId.VARP:
        try:
            varp = parse_varp(msg)
        except WireError:
            return None
        ok = varp.op is VarpOp.ANNOUNCE and varp.vmac == vm_mac
        return Event(t, "varp_announce", src, dst) if ok else None
    if msg_id == MsgId.FRAME and len(msg) >= 6 + 14:
        kind = _inner_kind(msg[6:], vm_mac, vm_ip)  # 4-byte header, 2-byte EtherIP, inner frame
        return Event(t, kind, src, dst) if kind else None
    return None


def _inner_kind(frame: bytes, vm_mac: bytes, vm_ip: str) -> str | None:
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype in (ETH_P_RARP, ETH_P_ARP):
        return "self_announce" if frame[6:12] == vm_mac and frame[0] & 1 else None
    if ethertype != ETH_P_IP or len(frame) < 14 + 20 + 1 or frame[23] != 1:
        return None
    icmp = 14 + (frame[14] & 0x0F) * 4
    if len(frame) <= icmp:
        return None
    ip = ipaddress.IPv4Address(vm_ip).packed
    if frame[icmp] == 8 and frame[30:34] == ip:
        return "echo_request"
    if frame[icmp] == 0 and frame[26:30] == ip:
        return "echo_reply"
    return None


def events(path: Path, vm_mac: str, vm_ip: str) -> list[Event]:
    mac = bytes.fromhex(vm_mac.replace(":", ""))
    out = []
    for t, frame in read_pcap(path.read_bytes()):
        ev = classify(t, frame, mac, vm_ip)
        if ev is not None:
            out.append(ev)
    return out


def timeline(evs: list[Event], gap_start: float, gap_end: float,
             new_host: str | None) -> dict[str, float | bool | None]:
    """The events of one migration on its gap's time axis (ms after `gap_start`); `new_host` is
    the destination's underlay address over a VNET, None on plain L2."""
    def first(kind: str, to: str | None = None, frm: str | None = None) -> float | None:
        for ev in evs:
            if (gap_start < ev.t <= gap_end + SLACK and ev.kind == kind and (to is None or ev.outer_dst == to)
                    and (frm is None or ev.outer_src == frm)):
                return round((ev.t - gap_start) * 1000, 1)
        return None

    guest = first("self_announce", frm=new_host)
    if guest is None:  # the longest gap was not the switchover's (a stall while copying): nothing to explain
        return {"gap_ms": round((gap_end - gap_start) * 1000, 1), "gap_at_switchover": False}
    reply = first("echo_reply", frm=new_host)
    out: dict[str, float | bool | None] = {
           "gap_ms": round((gap_end - gap_start) * 1000, 1), "gap_at_switchover": True, "announced_by_guest_ms": guest,
           "varp_announce_ms": first("varp_announce", frm=new_host) if new_host else None,
           "redirected_ms": first("echo_request", to=new_host) if new_host else None,
           "first_reply_ms": reply,
           "reply_after_guest_announce_ms": round(reply - guest, 1) if reply is not None else None,
           "requests_to_old_host_after_guest_announce": None}
    if new_host:  # what the VNET adds, counted in pings: still sent where the VM was
        since = gap_start + guest / 1000
        out["requests_to_old_host_after_guest_announce"] = sum(
            1 for ev in evs if ev.kind == "echo_request" and since <= ev.t <= gap_end and ev.outer_dst != new_host)
    return out


class Capture:
    """tcpdump on the segment bridge of a lab (in its namespace), to a pcap file."""

    def __init__(self, netns: str, path: Path, device: str = "br0") -> None:
        self.path = path
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "tcpdump", "-i", device, "-U", "-n", "-s", "256", "-w", str(path),
             CAPTURE_FILTER], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self._proc.stderr is not None
        line = self._proc.stderr.readline()  # "listening on br0, ..." once it captures
        if "listening" not in line:
            self.stop()
            raise TraceError(f"tcpdump on {device} in {netns} did not start: {line.strip()!r} (is tcpdump installed?)")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()  # tcpdump flushes its file on SIGTERM
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
