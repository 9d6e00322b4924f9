"""R1 on real hosts: a gatekeeper restarted in the middle of secured traffic never sends a
(SPI, sequence) pair twice under one key, and its traffic flows again within a second of it being
back (its peer drops nothing for longer)."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap

from softudc.lab import Lab
from softudc.lab.lab import start_gatekeeper, stop_gatekeeper
from softudc.lab.shell import pid_alive
from tests.e2e.conftest import Capture, endpoints, gk, wait_until
from tests.e2e.test_esp import drops, secure_lab

pytestmark = [pytest.mark.esp, pytest.mark.adversarial]

REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(\d+)")


def esp_ids(pcap_path: str) -> list[tuple[str, int, int]]:
    """(sender, SPI, 64-bit sequence number from the explicit IV) of every ESP packet."""
    out = []
    for p in rdpcap(pcap_path):
        if p.haslayer(UDP) and p[UDP].dport == 4500:
            esp = bytes(p[UDP].payload)
            out.append((p[IP].src, int.from_bytes(esp[0:4], "big"), int.from_bytes(esp[8:16], "big")))
    return out


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_r1_a_gatekeeper_restart_reuses_no_nonce_and_traffic_resumes_within_a_second(
        make_lab: Callable[..., Lab], captures: Callable[..., Capture], how: str) -> None:
    """`stop`: SIGTERM, a clean shutdown; `crash`: SIGKILL, nothing written on the way out."""
    lab = secure_lab(make_lab, {10: "conf"})
    endpoints(lab, {"c1": ("h1", 10, "10.0.0.1/24"), "c2": ("h2", 10, "10.0.0.2/24")})
    h1, h2 = lab.host("h1"), lab.host("h2")
    spi_before = gk(lab, "h2").call("vnet.list")[0]["spi"]
    auth_failed_before = drops(lab, "h1").get("esp_auth_failed", 0)
    cap = captures(h1.netns, "ul0", "underlay", "udp port 4500")
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.endpoints["c1"].netns, "ping", "-D", "-n", "-i", "0.01",
                               "-W", "1", "-w", "9", "10.0.0.2"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)  # steady traffic under h2's first run
        t_stop = time.time()
        if how == "crash":
            assert h2.pid
            os.kill(h2.pid, signal.SIGKILL)
            assert wait_until(lambda: not pid_alive(h2.pid or 0), timeout=5)
            h2.pid = None
        else:
            stop_gatekeeper(h2)
        time.sleep(0.5)
        start_gatekeeper(lab, h2)
        lab.save()
        t_up = time.time()  # its local API answers: the VNETs are back
        out, _ = pinger.communicate(timeout=20)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    pcap = cap.stop()

    replies = [float(m.group(1)) for line in out.splitlines() if (m := REPLY.match(line))]
    assert any(t < t_stop for t in replies), out[-2000:]
    after = [t for t in replies if t > t_up]
    assert after, f"no reply after the restart:\n{out[-2000:]}"
    assert after[0] - t_up < 1.0, f"traffic came back {after[0] - t_up:.2f} s after the gatekeeper"
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert max(gaps, default=0) < 0.5, "replies stalled again after the restart"
    assert drops(lab, "h1").get("esp_auth_failed", 0) == auth_failed_before  # the peer refused nothing

    assert gk(lab, "h2").call("vnet.list")[0]["spi"] == spi_before  # same SPI, same key: the hard case
    ids = esp_ids(str(pcap))
    from_h2 = [(spi, seq) for src, spi, seq in ids if src == h2.underlay_ip]
    repeated = [k for k, n in Counter(ids).items() if n > 1]
    assert not repeated, f"(sender, SPI, sequence) sent twice under one key: {repeated[:5]}"
    assert len(from_h2) > 300  # both runs of h2 are in the capture
    first_run = [seq for _, seq in from_h2[:50]]
    last_run = [seq for _, seq in from_h2[-50:]]
    assert min(last_run) > max(first_run)
