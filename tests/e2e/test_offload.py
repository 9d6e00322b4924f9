"""Bulk TCP over a VNET goes through TAP offloads, segmentation and GRO-style coalescing: the bytes
arrive intact, the underlay carries no IP fragments, and the super-frame path was really used."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from softudc.bench.measure import frag_creates
from softudc.lab import Lab
from tests.e2e.conftest import create_vnet, endpoints, gk, ns_run

pytestmark = pytest.mark.vnet

SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while chunk := c.recv(1 << 20):
    h.update(chunk); n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""
CLIENT = """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[2]))
s = socket.create_connection((sys.argv[1], 7000)); s.sendall(data); s.close()
print(len(data), hashlib.sha256(data).hexdigest())
"""


@pytest.mark.parametrize(("direction", "transport", "offloads", "datapath"),
                         [("h1_to_h2", "udp", True, "userspace"), ("h1_to_h2", "udp", False, "userspace"),
                          ("h1_to_h2", "raw", True, "auto"), ("h2_to_h1", "udp", True, "auto"),
                          ("h1_to_h2", "udp", False, "auto")])
def test_bulk_tcp_is_intact_and_unfragmented(make_lab: Callable[..., Lab], monkeypatch: pytest.MonkeyPatch,
                                             direction: str, transport: str, offloads: bool, datapath: str) -> None:
    """offloads=False: the underlay NICs segment in software, datagrams arrive one by one and the
    gatekeeper's userspace drain does what GRO would. datapath: `userspace` pins the forwarder (its
    TAP offloads and super-frames are what is tested); `auto` puts a UDP VNET on the eBPF path
    (GSO super-frames encapsulated once in tc), a raw one stays in userspace."""
    started = time.monotonic()
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", datapath)
    lab = make_lab(hosts=2, transport=transport, offloads=offloads)
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    src, dst, dst_ip = ("a1", "a2", "10.0.0.2") if direction == "h1_to_h2" else ("a2", "a1", "10.0.0.1")
    tx_host, rx_host = ("h1", "h2") if direction == "h1_to_h2" else ("h2", "h1")
    path = {v["vnet"]: v["path"] for v in gk(lab, tx_host).call("counters")["ebpf"]["vnets"]}[10]
    assert path == ("ebpf" if (datapath, transport) == ("auto", "udp") else "userspace"), path
    before = {h: gk(lab, h).call("counters")["ebpf"]["counters"] for h in (tx_host, rx_host)}
    frags = [frag_creates(h.netns) for h in lab.hosts]
    server = subprocess.Popen(["ip", "netns", "exec", lab.endpoints[dst].netns, sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        sent = ns_run(lab.endpoints[src].netns, sys.executable, "-c", CLIENT, dst_ip, str(SIZE), timeout=120)
        received = server.stdout.readline().split()
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
    assert received == sent.stdout.split(), "the bytes that arrived differ from the bytes sent"
    assert [frag_creates(h.netns) for h in lab.hosts] == frags, "the underlay fragmented packets"
    time.sleep(0.2)
    if path == "ebpf":
        _assert_ebpf_superframes(lab, before, tx_host, rx_host, offloads)
    else:
        _assert_forwarder_superframes(lab, tx_host, rx_host)
    print(f"bulk TCP {direction} {transport} offloads={offloads} on {path}: {time.monotonic() - started:.1f} s")


SIZE = 40 << 20
SEGMENT = 1400  # about one MSS at the VNET's 1452-byte MTU


def _assert_forwarder_superframes(lab: Lab, tx_host: str, rx_host: str) -> None:
    tx = gk(lab, tx_host).call("vnet.list")[0]
    rx = gk(lab, rx_host).call("vnet.list")[0]
    assert tx["offload"] and tx["tx_superframes"] > 0, tx
    assert rx["rx_superframes"] > 0, rx
    # Many segments per write: the point of the whole exercise.
    assert rx["rx_datagrams"] / max(1, rx["rx_superframes"]) > 4, rx


def _assert_ebpf_superframes(lab: Lab, before: dict[str, dict[str, int]], tx_host: str, rx_host: str,
                             offloads: bool) -> None:
    """The tc programs carried the flow: GSO super-frames were encapsulated once each (far fewer
    encapsulations than segments), decapsulated on the other side, nothing dropped by them."""
    tx = {k: v - before[tx_host].get(k, 0) for k, v in gk(lab, tx_host).call("counters")["ebpf"]["counters"].items()}
    rx = {k: v - before[rx_host].get(k, 0) for k, v in gk(lab, rx_host).call("counters")["ebpf"]["counters"].items()}
    segments = SIZE // SEGMENT
    # GRO after decap chosen from the underlay (gatekeeper/vnet/bpf/gro.py): off where veth carries
    # super-frames whole, on where it segments (decapsulated frames merged again by the GRO veth pair)
    chosen = gk(lab, rx_host).call("counters")["ebpf"]["gro"]
    assert chosen["gro_after_decap"] is (not offloads), chosen
    print("GRO after decap:", chosen["reason"])
    assert 0 < tx["enc_unicast"] < segments / 4, tx
    # A default veth underlay carries the super-frames whole; a wire-like one delivers segments.
    assert (rx["dec_ok"] < segments / 4) if offloads else (rx["dec_ok"] >= segments * 0.9), rx
    assert not any(v for k, v in rx.items() if k in ("dec_malformed", "dec_truncated", "dec_non_member",
                                                      "dec_err_room")), rx
