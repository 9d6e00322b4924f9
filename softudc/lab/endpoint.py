"""Endpoints: until VMs exist, a guest is a network namespace with a veth into its host's VNET.

The veth is created directly in the two namespaces; the host side is handed to the gatekeeper
(`port.attach`), which plugs it into the VNET's bridge and sets the MTU that fits the underlay.
The guest side gets the same MTU ("guests learn it"), the address and the MAC.
"""

from __future__ import annotations

import contextlib
import hashlib
import re

from softudc.lab import shell
from softudc.lab.shell import ip
from softudc.lab.state import Endpoint, Lab, LabError
from softudc.localapi import LocalApiClient

ENDPOINT_RE = re.compile(r"^[a-z0-9]{1,8}$")


def endpoint_mac(lab: str, name: str) -> str:
    """A stable, locally administered unicast MAC per (lab, endpoint)."""
    digest = hashlib.sha256(f"{lab}/{name}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def add_endpoint(lab: Lab, name: str, host: str, vnet: int, addr: str, mac: str | None = None) -> Endpoint:
    if not ENDPOINT_RE.match(name):
        raise LabError(f"endpoint name {name!r}: use 1-8 lowercase letters or digits")
    if name in lab.endpoints:
        raise LabError(f"endpoint {name!r} exists on {lab.endpoints[name].host}; remove it or pick another name")
    h = lab.host(host)
    mac = mac or endpoint_mac(lab.spec.name, name)
    ep = Endpoint(name=name, netns=f"{lab.prefix}e-{name}", host=h.name, vnet=vnet, ip=addr, mac=mac,
                  host_ifname=f"ep-{name}")
    shell.run(["ip", "netns", "add", ep.netns])
    try:
        ip("link", "set", "lo", "up", netns=ep.netns)
        shell.in_netns(ep.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        _plug(lab, ep)
    except BaseException:
        shell.run(["ip", "netns", "del", ep.netns], check=False)
        raise
    lab.endpoints[name] = ep
    lab.save()
    return ep


def _plug(lab: Lab, ep: Endpoint) -> None:
    h = lab.host(ep.host)
    ip("link", "add", "eth0", "netns", ep.netns, "address", ep.mac, "type", "veth",
       "peer", "name", ep.host_ifname, "netns", h.netns)
    result = LocalApiClient(h.api_socket).call("port.attach", vnet=ep.vnet, ifname=ep.host_ifname, mac=ep.mac)
    settings = ["mtu", str(result["mtu"])]
    if "gso_max_size" in result:
        settings += ["gso_max_size", str(result["gso_max_size"])]
    ip("link", "set", "eth0", *settings, "up", netns=ep.netns)
    ip("addr", "replace", ep.ip, "dev", "eth0", netns=ep.netns)


def move_endpoint(lab: Lab, name: str, to_host: str) -> Endpoint:
    """Unplug an endpoint from its host and plug it into another, keeping MAC and address.

    This is what a live migration looks like to the network; the new host's gatekeeper sends a
    gratuitous VARP ANNOUNCE when the port is attached.
    """
    ep = _get(lab, name)
    old = lab.host(ep.host)
    new = lab.host(to_host)
    LocalApiClient(old.api_socket).call("port.detach", ifname=ep.host_ifname)
    ip("link", "del", "eth0", netns=ep.netns)  # removes both ends of the veth
    ep.host = new.name
    _plug(lab, ep)
    lab.save()
    return ep


def remove_endpoint(lab: Lab, name: str) -> None:
    ep = _get(lab, name)
    with contextlib.suppress(Exception):
        LocalApiClient(lab.host(ep.host).api_socket).call("port.detach", ifname=ep.host_ifname)
    for pid in shell.netns_pids(ep.netns):
        shell.stop_pid(pid)
    shell.run(["ip", "netns", "del", ep.netns], check=False)
    del lab.endpoints[name]
    lab.save()


def _get(lab: Lab, name: str) -> Endpoint:
    try:
        return lab.endpoints[name]
    except KeyError:
        raise LabError(f"no endpoint {name!r} in lab {lab.spec.name} "
                       f"(endpoints: {', '.join(sorted(lab.endpoints)) or 'none'})") from None
