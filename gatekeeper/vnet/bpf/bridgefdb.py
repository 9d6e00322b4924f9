"""The Linux bridges' FDB with each entry's ages, read over a raw rtnetlink socket.

On the eBPF path the frames BPF carries never reach the userspace forwarder, so nothing fills the
VARP cache's `seen` from them; the VNET's bridge, though, learns every remote MAC on the port the
decapsulated frames enter by (the TAP, or the GRO veth's bridge side) and keeps for each entry when
it last saw a frame from that MAC (`updated`) and last forwarded one to it (`used`). The kernel
reports both in NDA_CACHEINFO as clock ticks ago (USER_HZ, centiseconds: br_fdb_fill_info,
jiffies_to_clock_t(now - fdb->updated)).

One RTM_GETNEIGH dump of family AF_BRIDGE returns the FDB of every bridge in the namespace. Raw
netlink rather than pyroute2 (gatekeeper/vnet/devices.py): this runs in the VARP tick, on the
event loop's thread, where pyroute2 >= 0.9 cannot build its own loop; and it costs one socket and
one dump. What the kernel sends is parsed bounded (`limit` entries; a short or odd attribute ends
the message, never the dump).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

RTM_NEWNEIGH = 28
RTM_GETNEIGH = 30
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
AF_BRIDGE = 7
NDA_LLADDR = 2
NDA_CACHEINFO = 3
NUD_PERMANENT = 0x80
USER_HZ = 100  # clock_t units of nda_cacheinfo

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
NLATTR = struct.Struct("=HH")
CACHEINFO = struct.Struct("=IIII")  # confirmed, used, updated, refcnt


class BridgeFdbError(OSError):
    pass


@dataclass(frozen=True, slots=True)
class FdbAge:
    ifindex: int  # the bridge port the MAC was learned on
    mac: bytes
    updated: float  # seconds since the bridge last saw a frame from this MAC
    used: float  # seconds since it last forwarded a frame to it


def request(seq: int) -> bytes:
    body = NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse(buf: bytes) -> tuple[list[FdbAge], bool]:
    """The learned entries in one read of the dump (permanent ones and entries without ages left
    out), and whether the dump is done. An NLMSG_ERROR raises BridgeFdbError."""
    out: list[FdbAge] = []
    off = 0
    while off + NLMSGHDR.size <= len(buf):
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, off)
        if length < NLMSGHDR.size or off + length > len(buf):
            return out, True  # malformed: stop here rather than loop or read past the buffer
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            err = struct.unpack_from("=i", buf, off + NLMSGHDR.size)[0] if length >= NLMSGHDR.size + 4 else 0
            if err:
                raise BridgeFdbError(-err, f"bridge FDB dump refused: errno {-err}")
            return out, True
        if kind == RTM_NEWNEIGH and length >= NLMSGHDR.size + NDMSG.size:
            entry = _entry(buf[off + NLMSGHDR.size: off + length])
            if entry is not None:
                out.append(entry)
        off += (length + 3) & ~3
    return out, False


def _entry(msg: bytes) -> FdbAge | None:
    family, ifindex, state, _flags, _type = NDMSG.unpack_from(msg, 0)
    if family != AF_BRIDGE or state & NUD_PERMANENT:
        return None
    mac = ages = None
    for kind, value in _attrs(msg[NDMSG.size:]):
        if kind == NDA_LLADDR and len(value) == 6:
            mac = value
        elif kind == NDA_CACHEINFO and len(value) >= CACHEINFO.size:
            _confirmed, used, updated, _refcnt = CACHEINFO.unpack_from(value)
            ages = (updated / USER_HZ, used / USER_HZ)
    if mac is None or ages is None:
        return None
    return FdbAge(ifindex, mac, ages[0], ages[1])


def _attrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + NLATTR.size <= len(buf):
        length, kind = NLATTR.unpack_from(buf, off)
        if length < NLATTR.size or off + length > len(buf):
            return
        yield kind & 0x3FFF, buf[off + NLATTR.size: off + length]  # without NLA_F_NESTED / NET_BYTEORDER
        off += (length + 3) & ~3


def dump(limit: int = 65536, timeout: float = 1.0) -> list[FdbAge]:
    """Every bridge's learned FDB entries in this network namespace, at most `limit` of them."""
    out: list[FdbAge] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.settimeout(timeout)
        s.bind((0, 0))
        s.send(request(1))
        done = False
        while not done:
            try:
                buf = s.recv(1 << 16)
            except TimeoutError:
                raise BridgeFdbError(f"bridge FDB dump: no answer within {timeout} s") from None
            entries, done = parse(buf)
            out.extend(entries[: limit - len(out)])
            if len(out) >= limit:
                break  # the socket closes with the rest of the dump unread
    return out
