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


@pytest.mark.parametrize(("direction", "transport", "offloads"),
                         [("h1_to_h2", "udp", True), ("h2_to_h1", "udp", True), ("h1_to_h2", "udp", False),
                          ("h1_to_h2", "raw", True)])
def test_bulk_tcp_is_intact_and_unfragmented(make_lab: Callable[..., Lab], direction: str, transport: str,
                                             offloads: bool) -> None:
    """offloads=False: the underlay NICs segment in software, datagrams arrive one by one and the
    gatekeeper's userspace drain does what GRO would."""
    lab = make_lab(hosts=2, transport=transport, offloads=offloads)
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    src, dst, dst_ip = ("a1", "a2", "10.0.0.2") if direction == "h1_to_h2" else ("a2", "a1", "10.0.0.1")
    frags = [frag_creates(h.netns) for h in lab.hosts]
    server = subprocess.Popen(["ip", "netns", "exec", lab.endpoints[dst].netns, sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        sent = ns_run(lab.endpoints[src].netns, sys.executable, "-c", CLIENT, dst_ip, str(40 << 20), timeout=120)
        received = server.stdout.readline().split()
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
    assert received == sent.stdout.split(), "the bytes that arrived differ from the bytes sent"
    assert [frag_creates(h.netns) for h in lab.hosts] == frags, "the underlay fragmented packets"
    tx_host, rx_host = ("h1", "h2") if direction == "h1_to_h2" else ("h2", "h1")
    time.sleep(0.2)
    tx = gk(lab, tx_host).call("vnet.list")[0]
    rx = gk(lab, rx_host).call("vnet.list")[0]
    assert tx["offload"] and tx["tx_superframes"] > 0, tx
    assert rx["rx_superframes"] > 0, rx
    # Many segments per write: the point of the whole exercise.
    assert rx["rx_datagrams"] / max(1, rx["rx_superframes"]) > 4, rx

