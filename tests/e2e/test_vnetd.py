"""vnetd joins segments that multicast does not cross: three segments behind a router, a vnetd
each. Endpoints resolve and ping each other; every broadcast arrives exactly once per endpoint;
stopping one vnetd cuts only its segment's broadcast reach, and restarting it restores it."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest
from scapy.layers.inet import UDP
from scapy.packet import Raw
from scapy.utils import rdpcap

from softudc.lab import Lab
from softudc.lab.vnetd import start_vnetd, stop_vnetd
from softudc.localapi import LocalApiClient
from tests.e2e.conftest import Capture, create_vnet, endpoints, ns_run, ping, wait_until

pytestmark = pytest.mark.vnetd

BROADCAST = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); "
             "s.sendto(sys.argv[1].encode(), ('10.0.0.255', 9999))")


def three_segments(make_lab: Callable[..., Lab], peering: str = "mesh") -> Lab:
    lab = make_lab(hosts=3, segments=3, vnetd=True, vnetd_peering=peering)
    create_vnet(lab, 10)
    endpoints(lab, {"e1": ("h1", 10, "10.0.0.1/24"), "e2": ("h2", 10, "10.0.0.2/24"),
                    "e3": ("h3", 10, "10.0.0.3/24")})
    return lab


def broadcast_counts(lab: Lab, captures: Callable[..., Capture], sender: str, tag: str) -> dict[str, int]:
    caps = {n: captures(ep.netns, "eth0", f"{tag}-{n}", "udp port 9999") for n, ep in lab.endpoints.items()}
    marker = f"softudc-{tag}"
    ns_run(lab.endpoints[sender].netns, sys.executable, "-c", BROADCAST, marker)
    time.sleep(1.0)
    return {n: sum(1 for p in rdpcap(str(c.stop())) if p.haslayer(Raw) and marker.encode() in bytes(p[Raw]))
            for n, c in caps.items()}


def test_triangle_reaches_every_segment_exactly_once(make_lab: Callable[..., Lab],
                                                     captures: Callable[..., Capture]) -> None:
    lab = three_segments(make_lab)
    assert {h.segment for h in lab.hosts} == {0, 1, 2}
    for src, dst in [("e1", "10.0.0.2"), ("e1", "10.0.0.3"), ("e2", "10.0.0.3")]:
        result = ping(lab, src, dst, count=2)
        assert result.returncode == 0, f"{src} -> {dst}: {result.stdout}"
    for sender in ("e1", "e2", "e3"):
        assert broadcast_counts(lab, captures, sender, f"tri-{sender}") == {"e1": 1, "e2": 1, "e3": 1}
    status = LocalApiClient(lab.vnetds[0].api_socket).call("status")
    assert [p["up"] for p in status["peers"]] == [True, True]
    assert status["counts"].get("duplicate", 0) >= 1  # the triangle does bring copies; they are dropped


def test_stopping_a_vnetd_cuts_only_its_segment_and_restarting_restores(
        make_lab: Callable[..., Lab], captures: Callable[..., Capture]) -> None:
    lab = three_segments(make_lab)
    assert broadcast_counts(lab, captures, "e1", "before") == {"e1": 1, "e2": 1, "e3": 1}
    stop_vnetd(lab.vnetds[2])
    assert broadcast_counts(lab, captures, "e1", "stopped") == {"e1": 1, "e2": 1, "e3": 0}
    assert broadcast_counts(lab, captures, "e3", "stopped3") == {"e1": 0, "e2": 0, "e3": 1}
    peers = LocalApiClient(lab.vnetds[0].api_socket).call("peers")
    assert wait_until(lambda: not next(p for p in LocalApiClient(lab.vnetds[0].api_socket).call("peers")
                                       if p["address"] == lab.vnetds[2].address)["up"], timeout=5), peers
    start_vnetd(lab, lab.vnetds[2])
    assert wait_until(lambda: all(p["up"] for p in LocalApiClient(lab.vnetds[0].api_socket).call("peers")),
                      timeout=5)
    assert broadcast_counts(lab, captures, "e1", "restarted") == {"e1": 1, "e2": 1, "e3": 1}
    assert broadcast_counts(lab, captures, "e3", "restarted3") == {"e1": 1, "e2": 1, "e3": 1}


def test_a_chain_forwards_through_the_middle(make_lab: Callable[..., Lab],
                                             captures: Callable[..., Capture]) -> None:
    lab = three_segments(make_lab, peering="chain")
    assert broadcast_counts(lab, captures, "e1", "chain") == {"e1": 1, "e2": 1, "e3": 1}
    assert ping(lab, "e1", "10.0.0.3", count=2).returncode == 0


GARBAGE = """
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for b in [b"", b"\\x00\\x03", b"\\x00\\x03\\x00\\x01" + os.urandom(60), os.urandom(100)]:
    s.sendto(b, (sys.argv[1], 1798))
"""


def test_garbage_to_a_vnetd_is_counted_and_relaying_goes_on(make_lab: Callable[..., Lab],
                                                            captures: Callable[..., Capture]) -> None:
    lab = three_segments(make_lab)
    ns_run(lab.host("h2").netns, sys.executable, "-c", GARBAGE, lab.vnetds[0].address)
    client = LocalApiClient(lab.vnetds[0].api_socket)
    assert wait_until(lambda: client.call("status")["counts"].get("malformed", 0)
                      + client.call("status")["counts"].get("auth_failed", 0) >= 2)
    assert broadcast_counts(lab, captures, "e1", "after-garbage") == {"e1": 1, "e2": 1, "e3": 1}


REPLAY = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[2], 1798))
"""


@pytest.mark.adversarial
def test_r23_a_captured_relay_message_replayed_later_is_not_injected_again(
        make_lab: Callable[..., Lab], captures: Callable[..., Capture]) -> None:
    """The audit's vnetd_replay.py on real sockets: a relay message from vnetd 0 to vnetd 1,
    captured on the wire and sent again from vnetd 0's address 2 s and 31 s later."""
    lab = three_segments(make_lab)
    v0, v1 = lab.vnetds[0], lab.vnetds[1]
    wire = captures(v1.netns, "vd0", "relay", f"udp and src host {v0.address} and dst host {v1.address} and port 1798")
    assert broadcast_counts(lab, captures, "e1", "replayed") == {"e1": 1, "e2": 1, "e3": 1}
    marker = b"softudc-replayed"
    relayed = [bytes(p[UDP].payload) for p in rdpcap(str(wire.stop())) if p.haslayer(UDP) and marker in bytes(p)]
    assert len(relayed) == 1  # the broadcast, relayed once from segment 0 to segment 1
    sent_at = time.monotonic()
    client = LocalApiClient(v1.api_socket)
    before = client.call("status")["counts"]
    at_e2 = captures(lab.endpoints["e2"].netns, "eth0", "replayed-at-e2", "udp port 9999")
    for later in (2.0, 31.0):
        time.sleep(max(0.0, sent_at + later - time.monotonic()))
        ns_run(v0.netns, sys.executable, "-c", REPLAY, v0.address, v1.address, relayed[0].hex())
        time.sleep(0.5)
    arrived = [p for p in rdpcap(str(at_e2.stop())) if p.haslayer(Raw) and marker in bytes(p[Raw])]
    assert arrived == []  # neither replay reached the endpoint
    after = client.call("status")["counts"]
    refused = sum(after.get(k, 0) - before.get(k, 0) for k in ("duplicate", "stale", "too_old"))
    assert refused == 2, {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
