"""Real QEMU guests under a libvirtd per lab host, on VNETs: guest-to-guest traffic, isolation,
stats, live migration with VARP re-learning, failed migrations, and gatekeeper restarts."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from softudc.lab import Lab
from softudc.lab.guest import http_get
from softudc.lab.lab import start_gatekeeper
from softudc.localapi import LocalApiError
from tests.e2e.conftest import create_vnet, endpoints, gk, wait_until

pytestmark = [pytest.mark.vm]

def http(lab: Lab, endpoint: str, url: str) -> str:
    return http_get(lab.endpoints[endpoint].netns, url)


def start_vm(lab: Lab, host: str, name: str, vnet: int, mac: str, ip: str, probe: list[str] | None = None) -> None:
    gk(lab, host).call("vm.start", name=name, nics=[{"vnet": vnet, "mac": mac, "ip": ip, "probe": probe or []}])


def counter(lab: Lab, endpoint: str, ip: str) -> int | None:
    text = http(lab, endpoint, f"http://{ip}/counter")
    return int(text) if text.isdigit() else None


def test_vms_talk_over_their_vnet_and_not_across(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=3, vms=True)
    create_vnet(lab, 10)
    create_vnet(lab, 20)
    start_vm(lab, "h1", "va", 10, "52:54:00:0a:00:01", "10.0.0.11/24", ["10.0.0.12"])
    start_vm(lab, "h2", "vb", 10, "52:54:00:0a:00:02", "10.0.0.12/24", ["10.0.0.11"])
    # Same subnet and even vb's address, on the other VNET.
    start_vm(lab, "h3", "vc", 20, "52:54:00:14:00:03", "10.0.0.12/24", ["10.0.0.11"])
    endpoints(lab, {"e1": ("h1", 10, "10.0.0.1/24"), "e3": ("h3", 20, "10.0.0.1/24")})
    assert wait_until(lambda: "ping=ok http=vb" in http(lab, "e1", "http://10.0.0.11/probe"), timeout=60), \
        http(lab, "e1", "http://10.0.0.11/probe")
    assert wait_until(lambda: "ping=ok http=va" in http(lab, "e1", "http://10.0.0.12/probe"), timeout=30)
    # The other VNET's 10.0.0.12 is vc, not vb.
    assert wait_until(lambda: http(lab, "e3", "http://10.0.0.12/index.html") == "vc", timeout=60)
    assert wait_until(lambda: "10.0.0.11 ping=fail http=none" in http(lab, "e3", "http://10.0.0.12/probe"),
                      timeout=30)
    stats = {s["name"]: s for s in gk(lab, "h1").call("vm.stats")}
    assert stats["va"]["cpu_time_ns"] > 0 and stats["va"]["state"] == "running"
    assert stats["va"]["net"][0]["rx_bytes"] > 0 and stats["va"]["net"][0]["tx_bytes"] > 0


@pytest.mark.migration
def test_live_migration_keeps_the_guest_and_every_host_relearns_it(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=3, vms=True)
    create_vnet(lab, 10)
    start_vm(lab, "h1", "va", 10, "52:54:00:0a:00:01", "10.0.0.11/24")
    start_vm(lab, "h2", "vb", 10, "52:54:00:0a:00:02", "10.0.0.12/24", ["10.0.0.11"])  # another VM pinging va
    endpoints(lab, {"e2": ("h2", 10, "10.0.0.2/24")})
    assert wait_until(lambda: counter(lab, "e2", "10.0.0.11") is not None, timeout=60)
    assert wait_until(lambda: "ping=ok http=va" in http(lab, "e2", "http://10.0.0.12/probe"), timeout=60)
    before = counter(lab, "e2", "10.0.0.11")
    assert before is not None
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.endpoints["e2"].netns, "ping", "-n", "-i", "0.01",
                               "-w", "12", "10.0.0.11"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        result = gk(lab, "h1").call("vm.migrate", name="va", dest_uri=f"qemu+tcp://{lab.host('h3').mgmt_ip}/system",
                                    bandwidth_mib=1000, downtime_ms=50)
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    assert result["state"] == "completed"
    seqs = sorted(int(s) for s in re.findall(r"icmp_seq=(\d+) ttl", out))
    gap_ms = max(b - a for a, b in itertools.pairwise(seqs)) * 10
    print(f"migration: {result['wall_ms']} ms, longest ping gap {gap_ms} ms, job "
          f"{gk(lab, 'h3').call('vm.completed_job', name='va')}")
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))  # type: ignore[union-attr]
    assert seqs[-1] >= sent - 3, f"pings did not resume after the migration (last reply {seqs[-1]} of {sent})"
    after = counter(lab, "e2", "10.0.0.11")
    assert after is not None and after > before, (before, after)  # the same guest kept counting
    where = {h.name: sorted(d["name"] for d in gk(lab, h.name).call("vm.list")) for h in lab.hosts}
    assert where == {"h1": [], "h2": ["vb"], "h3": ["va"]}, where

    def points_to_h3(host: str) -> bool:
        cache = [e for e in gk(lab, host).call("varp.cache") if e["mac"] == "52:54:00:0a:00:01"]
        return bool(cache) and cache[0]["addr"] == lab.host("h3").underlay_ip

    assert wait_until(lambda: points_to_h3("h1") and points_to_h3("h2"), timeout=5)
    # The other VM's own pings reach va on h3 (its probe runs every second).
    time.sleep(2)
    assert "10.0.0.11 ping=ok http=va" in http(lab, "e2", "http://10.0.0.12/probe")


@pytest.mark.migration
def test_a_migration_to_a_broken_destination_fails_cleanly(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=2, vms=True)
    create_vnet(lab, 10)
    start_vm(lab, "h1", "va", 10, "52:54:00:0a:00:01", "10.0.0.11/24")
    with pytest.raises(LocalApiError) as e:
        gk(lab, "h1").call("vm.migrate", name="va", dest_uri="qemu+tcp://10.99.0.99/system")
    message = str(e.value)
    assert "migration of va" in message and "keeps running on this host" in message, message
    assert [d["state"] for d in gk(lab, "h1").call("vm.list")] == ["running"]


def test_a_restarted_gatekeeper_readopts_running_vms(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=2, vms=True)
    create_vnet(lab, 10)
    start_vm(lab, "h1", "va", 10, "52:54:00:0a:00:01", "10.0.0.11/24")
    endpoints(lab, {"e2": ("h2", 10, "10.0.0.2/24")})
    assert wait_until(lambda: counter(lab, "e2", "10.0.0.11") is not None, timeout=60)
    before = counter(lab, "e2", "10.0.0.11")
    h1 = lab.host("h1")
    assert h1.pid
    import os

    os.kill(h1.pid, signal.SIGKILL)  # a crash, not a clean stop
    time.sleep(0.5)
    start_gatekeeper(lab, h1)
    lab.save()
    vms = gk(lab, "h1").call("vm.list")
    assert [(v["name"], v["state"]) for v in vms] == [("va", "running")]  # not duplicated
    gk(lab, "h2").call("varp.flush")  # h2 must now ask; only the re-adopted VM's host can answer
    after = None
    assert wait_until(lambda: (counter(lab, "e2", "10.0.0.11") or -1) > (before or 0), timeout=20)
    after = counter(lab, "e2", "10.0.0.11")
    assert after is not None and before is not None and after > before  # not restarted: still counting
