"""Byte layouts of the eBPF data path's maps, declared once (mirror of vnet_dp.c's structs).

Every key and value the gatekeeper writes or reads goes through these pack/unpack functions;
tests/unit/gatekeeper/vnet/bpf/test_layouts.py round-trips them and checks the sizes against the
object file's BTF-free expectations (`SIZES`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

MAX_MEMBERS = 8
VNET_MAX = 0xFFF
MAC_LEN = 6

# Index order of the per-CPU counter array `ebs_stats` (enum in vnet_dp.c).
COUNTERS = (
    "enc_unicast", "enc_flood", "enc_flood_copy", "enc_miss", "enc_no_uplink", "enc_punt",
    "enc_err_room", "enc_err_fib", "enc_no_neigh", "enc_toobig", "enc_short",
    "dec_ok", "dec_pass", "dec_unknown_vnet", "dec_non_member", "dec_malformed", "dec_truncated",
    "dec_err_room",
)

EV_MISS = 1
EV_NO_NEIGH = 2
CFG_PUNT = 1  # Cfg.flags: floods/misses continue to the uplink (a TAP read by the userspace forwarder)
CFG_LEARN = 2  # Cfg.flags: floods from a MAC ebs_fdb does not place at their sender go up to the socket

_U32 = struct.Struct("=I")
_CFG = struct.Struct("=4sIII")
_FDB_KEY = struct.Struct("=I6s2x")
_FDB_VAL = struct.Struct("=4s4x")
_LOCAL = struct.Struct("=IIII")
_MEMBERS = struct.Struct(f"=I{4 * MAX_MEMBERS}s")
_EVENT = struct.Struct("=II6s2x4s")
VSTATS = struct.Struct("=QQQQ")  # tx_frames, tx_bytes, rx_frames, rx_bytes (one CPU's share)

SIZES = {
    "cfg": _CFG.size, "fdb_key": _FDB_KEY.size, "fdb_val": _FDB_VAL.size, "local": _LOCAL.size,
    "members": _MEMBERS.size, "event": _EVENT.size, "vstats": VSTATS.size,
}


class LayoutError(ValueError):
    pass


def _ip(addr: str) -> bytes:
    try:
        return ipaddress.IPv4Address(addr).packed
    except ValueError as e:
        raise LayoutError(f"bpf map: {addr!r} is not an IPv4 address ({e})") from None


def _mac(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != MAC_LEN or not all(len(p) == 2 for p in parts):
        raise LayoutError(f"bpf map: {mac!r} is not a MAC address (want aa:bb:cc:dd:ee:ff)")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise LayoutError(f"bpf map: {mac!r} is not a MAC address (want aa:bb:cc:dd:ee:ff)") from None


def _vnet(vnet: int) -> int:
    if not 1 <= vnet <= VNET_MAX:
        raise LayoutError(f"bpf map: VNET id {vnet} outside 1..{VNET_MAX}")
    return vnet


def _mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def u32(v: int) -> bytes:
    return _U32.pack(v)


def unpack_u32(raw: bytes) -> int:
    return int(_U32.unpack(raw)[0])


@dataclass(frozen=True, slots=True)
class Cfg:
    local_ip: str
    underlay_ifindex: int
    flags: int = 0

    def pack(self) -> bytes:
        return _CFG.pack(_ip(self.local_ip), self.underlay_ifindex, self.flags, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> Cfg:
        ip, ifindex, flags, _ = _CFG.unpack(raw)
        return cls(str(ipaddress.IPv4Address(ip)), ifindex, flags)


@dataclass(frozen=True, slots=True, order=True)
class FdbKey:
    vnet: int
    mac: str

    def pack(self) -> bytes:
        return _FDB_KEY.pack(_vnet(self.vnet), _mac(self.mac.lower()))

    @classmethod
    def unpack(cls, raw: bytes) -> FdbKey:
        vnet, mac = _FDB_KEY.unpack(raw)
        return cls(vnet, _mac_str(mac))


def pack_fdb_val(ip: str) -> bytes:
    return _FDB_VAL.pack(_ip(ip))


def unpack_fdb_val(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(_FDB_VAL.unpack(raw)[0]))


@dataclass(frozen=True, slots=True)
class Local:
    """Where vnet_decap sends a VNET's frames: an ifindex, BPF_F_INGRESS or 0, the endpoint MTU;
    and where vnet_encap punts from another uplink of the VNET (0: to the uplink's own stack)."""

    ifindex: int
    redirect_flags: int = 0
    mtu: int = 1452
    punt_ifindex: int = 0

    def pack(self) -> bytes:
        return _LOCAL.pack(self.ifindex, self.redirect_flags, self.mtu, self.punt_ifindex)

    @classmethod
    def unpack(cls, raw: bytes) -> Local:
        ifindex, flags, mtu, punt = _LOCAL.unpack(raw)
        return cls(ifindex, flags, mtu, punt)


def pack_members(ips: list[str]) -> bytes:
    if len(ips) > MAX_MEMBERS:
        raise LayoutError(f"bpf map: {len(ips)} member hosts, the eBPF path floods to at most {MAX_MEMBERS}")
    return _MEMBERS.pack(len(ips), b"".join(_ip(a) for a in ips))


def unpack_members(raw: bytes) -> list[str]:
    n, blob = _MEMBERS.unpack(raw)
    if n > MAX_MEMBERS:
        raise LayoutError(f"bpf map: members entry claims {n} hosts (max {MAX_MEMBERS})")
    return [str(ipaddress.IPv4Address(blob[4 * i:4 * i + 4])) for i in range(n)]


@dataclass(frozen=True, slots=True)
class Event:
    """A ring-buffer record: a FDB miss (kind EV_MISS) or an unresolved underlay neighbour."""

    kind: int
    vnet: int
    mac: str
    ip: str

    @classmethod
    def unpack(cls, raw: bytes) -> Event:
        if len(raw) < _EVENT.size:
            raise LayoutError(f"bpf event: {len(raw)} bytes, need {_EVENT.size}")
        kind, vnet, mac, ip = _EVENT.unpack(raw[:_EVENT.size])
        return cls(kind, vnet, _mac_str(mac), str(ipaddress.IPv4Address(ip)))

    def pack(self) -> bytes:
        return _EVENT.pack(self.kind, self.vnet, _mac(self.mac), _ip(self.ip))
