"""Kernel devices of a VNET on this host: a bridge the endpoints plug into, and a TAP on that
bridge through which the forwarder sees the VNET's traffic (pyroute2 for links, TUNSETIFF for
the TAP).

    endpoint veth ─┐
    VM tap       ──┼─ vnbr<ID> ── vntap<ID> ⇄ forwarder ⇄ underlay socket
    endpoint veth ─┘
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Callable, Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02


class DeviceError(RuntimeError):
    pass


def bridge_name(vnet: int) -> str:
    return f"vnbr{vnet}"


def tap_name(vnet: int) -> str:
    return f"vntap{vnet}"


def open_tap(name: str, offload: bool = False) -> int:
    """Create (or attach to) TAP `name`; the device lives as long as the returned fd.

    With `offload`, every read and write carries a virtio_net_hdr, and the kernel may hand over
    TCPv4 super-frames and frames with a partial checksum (reference/dataplane.md: the one lever
    that matters, x5.8 TCP).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
    except OSError as e:
        os.close(fd)
        raise DeviceError(f"cannot create TAP {name}: {e} (is /dev/net/tun available?)") from e
    return fd


class Devices:
    """Bridge and port operations in this network namespace.

    pyroute2 >= 0.9 runs its own asyncio loop inside the synchronous IPRoute, which cannot be built
    on a thread that already runs one; so each operation opens its own netlink socket on the
    calling (executor) thread. Operations are rare control-plane events; the cost is ~1 ms.
    """

    def __init__(self, factory: Callable[[], IPRoute] = IPRoute) -> None:
        self._factory = factory

    @contextlib.contextmanager
    def _nl(self) -> Iterator[IPRoute]:
        ipr = self._factory()
        try:
            yield ipr
        finally:
            ipr.close()

    def index(self, ifname: str) -> int | None:
        with self._nl() as ipr:
            return _lookup(ipr, ifname)

    def ensure_bridge(self, name: str, mtu: int) -> int:
        with self._nl() as ipr:
            idx = _lookup(ipr, name)
            if idx is None:
                try:
                    ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0,
                             br_mcast_snooping=0)
                except NetlinkError as e:
                    raise DeviceError(f"cannot create bridge {name}: {e}") from e
                idx = _require(ipr, name)
            ipr.link("set", index=idx, mtu=mtu, state="up")
            return idx

    def enslave(self, ifname: str, bridge: str, mtu: int) -> None:
        with self._nl() as ipr:
            port, br = _require(ipr, ifname), _require(ipr, bridge)
            try:
                ipr.link("set", index=port, master=br, mtu=mtu, state="up")
            except NetlinkError as e:
                raise DeviceError(f"cannot attach {ifname} to {bridge} with MTU {mtu}: {e}") from e

    def release(self, ifname: str) -> None:
        with self._nl() as ipr:
            idx = _lookup(ipr, ifname)
            if idx is not None:
                ipr.link("set", index=idx, master=0)

    def delete(self, ifname: str) -> None:
        with self._nl() as ipr:
            idx = _lookup(ipr, ifname)
            if idx is not None:
                ipr.link("del", index=idx)

    def forget_fdb(self, bridge: str, mac: str) -> None:
        """Remove a learned MAC from the bridge, e.g. one that used to be remote and is now here."""
        with self._nl() as ipr:
            br = _lookup(ipr, bridge)
            if br is None:
                return
            for entry in ipr.fdb("dump", master=br):
                if entry.get("NDA_LLADDR") == mac and not entry["state"] & 0x80:  # skip NUD_PERMANENT
                    with contextlib.suppress(NetlinkError):
                        ipr.fdb("del", ifindex=entry["ifindex"], lladdr=mac, master=True)


def _lookup(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _require(ipr: IPRoute, ifname: str) -> int:
    idx = _lookup(ipr, ifname)
    if idx is None:
        raise DeviceError(f"no interface {ifname!r} on this host")
    return idx
