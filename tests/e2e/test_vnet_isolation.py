"""Two VNETs with the same subnet on a 3-host lab: reachability within, isolation between,
broadcast to every member and no one else, MTU that fits the underlay."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from softudc.bench.measure import frag_creates
from softudc.lab import Lab
from softudc.localapi import LocalApiError
from tests.e2e.conftest import Capture, create_vnet, endpoints, gk, ns_run, ping

pytestmark = pytest.mark.vnet

TWO_VNETS = {
    "a1": ("h1", 10, "10.0.0.1/24"),
    "a2": ("h2", 10, "10.0.0.2/24"),
    "a3": ("h3", 10, "10.0.0.3/24"),
    "b1": ("h1", 20, "10.0.0.1/24"),
    "b2": ("h2", 20, "10.0.0.2/24"),
}


def _two_vnet_lab(make_lab: Callable[..., Lab], **kwargs: object) -> Lab:
    lab = make_lab(hosts=3, **kwargs)
    create_vnet(lab, 10)
    create_vnet(lab, 20)
    endpoints(lab, TWO_VNETS)
    return lab


@pytest.mark.parametrize(("transport", "datapath"), [("udp", "auto"), ("udp", "userspace"), ("raw", "auto")])
def test_same_subnet_vnets_are_isolated(make_lab: Callable[..., Lab], captures: Callable[..., Capture],
                                        transport: str, datapath: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", datapath)  # the default path and the forced userspace one
    lab = _two_vnet_lab(make_lab, transport=transport)
    caps = {name: captures(ep.netns, "eth0", name) for name, ep in lab.endpoints.items()}
    for src, dst in [("a1", "10.0.0.2"), ("a1", "10.0.0.3"), ("a2", "10.0.0.3"), ("b1", "10.0.0.2"),
                     ("b2", "10.0.0.1")]:
        result = ping(lab, src, dst)
        assert result.returncode == 0, f"{src} -> {dst} failed:\n{result.stdout}{result.stderr}"
    vnet_of = {ep.mac: ep.vnet for ep in lab.endpoints.values()}
    for name, cap in caps.items():
        mine = lab.endpoints[name].vnet
        for pkt in rdpcap(str(cap.stop())):
            src_vnet = vnet_of.get(pkt[Ether].src.lower())
            assert src_vnet in (None, mine), f"{name} (vnet {mine}) saw a frame from vnet {src_vnet}: {pkt.summary()}"
        # Each endpoint did see traffic of its own VNET, so the capture was live.
        assert any(vnet_of.get(p[Ether].src.lower()) == mine and p[Ether].src.lower() != lab.endpoints[name].mac
                   for p in rdpcap(str(cap.path))), f"{name} saw nothing from its own vnet"


@pytest.mark.parametrize("datapath", ["auto", "userspace"])
def test_broadcast_reaches_every_member_once_and_no_one_else(make_lab: Callable[..., Lab],
                                                             captures: Callable[..., Capture], datapath: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", datapath)  # the default path and the forced userspace one
    lab = _two_vnet_lab(make_lab)
    caps = {name: captures(ep.netns, "eth0", name, "udp port 9999") for name, ep in lab.endpoints.items()}
    marker = b"softudc-broadcast-marker"
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); "
            f"s.sendto({marker!r}, ('10.0.0.255', 9999))")
    ns_run(lab.endpoints["a1"].netns, sys.executable, "-c", code)
    time.sleep(0.5)
    counts = {}
    for name, cap in caps.items():
        counts[name] = sum(1 for p in rdpcap(str(cap.stop())) if p.haslayer(Raw) and marker in bytes(p[Raw]))
    assert counts == {"a1": 1, "a2": 1, "a3": 1, "b1": 0, "b2": 0}, counts


@pytest.mark.parametrize(("transport", "mtu", "datapath"),
                         [("udp", 1452, "auto"), ("udp", 1452, "userspace"), ("raw", 1464, "auto")])
def test_mtu_fits_the_underlay_and_nothing_fragments(make_lab: Callable[..., Lab], transport: str, mtu: int,
                                                     datapath: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", datapath)  # the default path and the forced userspace one
    lab = make_lab(hosts=2, transport=transport)
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    assert gk(lab, "h1").call("vnet.list")[0]["mtu"] == mtu
    eth0 = ns_run(lab.endpoints["a1"].netns, "ip", "-o", "link", "show", "eth0").stdout
    assert f"mtu {mtu} " in eth0
    frag_before = frag_creates(lab.host("h1").netns)
    full = ping(lab, "a1", "10.0.0.2", count=3, size=mtu - 28, df=True)
    assert full.returncode == 0, full.stdout + full.stderr
    # One byte more cannot leave the guest with DF set: the sender is told, nothing vanishes.
    over = ping(lab, "a1", "10.0.0.2", count=1, size=mtu - 27, df=True)
    assert over.returncode != 0 and "message too long" in (over.stdout + over.stderr).lower()
    assert frag_creates(lab.host("h1").netns) == frag_before


@pytest.mark.parametrize("datapath", ["auto", "userspace"])
def test_a_vnet_can_ask_for_a_smaller_mtu_but_not_a_larger_one(make_lab: Callable[..., Lab], datapath: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", datapath)
    lab = make_lab(hosts=2)
    create_vnet(lab, 10, mtu=1400)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    assert gk(lab, "h1").call("vnet.list")[0]["mtu"] == 1400
    assert "mtu 1400 " in ns_run(lab.endpoints["a1"].netns, "ip", "-o", "link", "show", "eth0").stdout
    assert ping(lab, "a1", "10.0.0.2", count=2, size=1400 - 28, df=True).returncode == 0
    with pytest.raises(LocalApiError) as e:
        gk(lab, "h1").call("vnet.create", vnet=11, mtu=1500)
    assert "MTU 1500 does not fit" in str(e.value) and "at most 1452" in str(e.value)
    assert [v["vnet"] for v in gk(lab, "h1").call("vnet.list")] == [10]
