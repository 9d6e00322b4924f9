"""VARP across real hosts: resolution by REQUEST/ANNOUNCE, ageing, and re-learning a moved MAC
at once through the gratuitous ANNOUNCE. Learning from frames is off here, so only VARP can
make these pass. Every test runs on both data paths: `auto` (the VNET on eBPF, whose FDB map
the gatekeeper fills from its VARP cache) and forced `userspace`."""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from collections.abc import Callable

import pytest

from softudc.lab import Lab
from softudc.lab.endpoint import move_endpoint
from tests.e2e.conftest import create_vnet, endpoints, gk, ns_run, ping, wait_until

pytestmark = pytest.mark.vnet
NO_LEARNING = {"learn": False}


@pytest.fixture(autouse=True, params=["auto", "userspace"])
def datapath(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every lab gatekeeper's data path: the default and the forced userspace one."""
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", request.param)
    return str(request.param)


def assert_path(lab: Lab, datapath: str, vnet: int = 10) -> None:
    want = "ebpf" if datapath == "auto" else "userspace"
    for h in lab.hosts:
        paths = {v["vnet"]: v["path"] for v in gk(lab, h.name).call("counters")["ebpf"]["vnets"]}
        assert paths.get(vnet) == want, (h.name, paths)


def cache_entry(lab: Lab, host: str, mac: str) -> dict[str, object] | None:
    for entry in gk(lab, host).call("varp.cache"):
        if entry["mac"] == mac:
            return dict(entry)
    return None


def test_a_miss_resolves_through_request_and_announce(make_lab: Callable[..., Lab], datapath: str) -> None:
    lab = make_lab(hosts=2, varp=NO_LEARNING)
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    assert_path(lab, datapath)
    for h in ("h1", "h2"):
        gk(lab, h).call("varp.flush")  # forget the announces sent on attach
    assert cache_entry(lab, "h2", lab.endpoints["a1"].mac) is None
    result = ping(lab, "a1", "10.0.0.2", count=2)
    assert result.returncode == 0, result.stdout
    h2 = gk(lab, "h2").call("counters")["varp"]
    h1 = gk(lab, "h1").call("counters")["varp"]
    assert h2.get("request_tx", 0) >= 1 and h1.get("reply_tx", 0) >= 1, (h1, h2)
    entry = cache_entry(lab, "h2", lab.endpoints["a1"].mac)
    assert entry and entry["state"] == "reachable" and entry["addr"] == lab.host("h1").underlay_ip


def test_unanswered_requests_fail_and_count_the_queued_frames(make_lab: Callable[..., Lab], datapath: str) -> None:
    lab = make_lab(hosts=2, varp={**NO_LEARNING, "probe_interval": 0.2, "probe_max": 3})
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24")})
    assert_path(lab, datapath)

    # A static neighbour entry for a MAC nobody has: frames to it can only wait on VARP.
    ghost = "02:00:00:00:de:ad"
    ns_run(lab.endpoints["a1"].netns, "ip", "neigh", "replace", "10.0.0.9", "lladdr", ghost, "dev", "eth0")
    ping(lab, "a1", "10.0.0.9", count=2, interval=0.2)
    assert wait_until(lambda: (cache_entry(lab, "h1", ghost) or {}).get("state") == "failed", timeout=5)
    counters = gk(lab, "h1").call("counters")
    assert counters["drops"].get("varp_unresolved", 0) >= 1
    assert counters["varp"]["request_tx"] == 3


def test_entries_age_out(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=2, varp={**NO_LEARNING, "ttl": 1, "stale_ttl": 1})
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    assert ping(lab, "a1", "10.0.0.2", count=1).returncode == 0
    mac = lab.endpoints["a2"].mac
    assert cache_entry(lab, "h1", mac) is not None
    assert wait_until(lambda: (cache_entry(lab, "h1", mac) or {}).get("state") == "stale", timeout=3)
    assert wait_until(lambda: cache_entry(lab, "h1", mac) is None, timeout=4)


def test_moved_endpoint_is_relearned_at_once(make_lab: Callable[..., Lab], datapath: str) -> None:
    lab = make_lab(hosts=3, varp=NO_LEARNING)  # default ttl 60 s: expiry cannot rescue this test
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    assert_path(lab, datapath)
    assert ping(lab, "a1", "10.0.0.2", count=1).returncode == 0
    interval = 0.01
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", lab.endpoints["a1"].netns, "ping", "-n", "-i", str(interval), "-w", "4", "10.0.0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        move_endpoint(lab, "a2", "h3")
        out, _ = pinger.communicate(timeout=15)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    seqs = sorted(int(m) for m in re.findall(r"icmp_seq=(\d+) ttl", out))
    assert seqs, out
    gap = max(b - a for a, b in itertools.pairwise(seqs)) * interval
    print(f"ping gap across the move: {gap * 1000:.0f} ms ({len(seqs)} replies)")
    assert seqs[-1] * interval > 2.0, "pings did not resume after the move"
    assert gap < 1.0, f"the moved endpoint was unreachable for {gap:.2f} s"
    mac = lab.endpoints["a2"].mac
    entry = cache_entry(lab, "h1", mac)
    assert entry and entry["addr"] == lab.host("h3").underlay_ip
