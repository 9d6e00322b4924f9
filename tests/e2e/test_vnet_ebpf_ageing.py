"""VARP entries in use on the eBPF path do not age out (docs/ebpf.md, "Ageing on the eBPF path").

The frames BPF carries never reach the forwarder, so only the VNET's bridge sees them; with short
timers (ttl 2 s, stale_ttl 2 s) a ping running for three times ttl + stale_ttl must keep the remote
MAC's entry in the VARP cache and in ebs_fdb: no encapsulation miss, no VARP REQUEST while it runs.
Without the bridge's confirmation the entry left the map every 4 s and the next frame missed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from softudc.lab import Lab
from tests.e2e.conftest import create_vnet, endpoints, gk, ping

pytestmark = pytest.mark.vnet
TIMERS = {"learn": False, "ttl": 2, "stale_ttl": 2}


def _snapshot(lab: Lab, host: str) -> tuple[int, int]:
    """(encapsulation misses in BPF, VARP REQUESTs sent) on `host`."""
    c = gk(lab, host).call("counters")
    return int(c["ebpf"]["counters"]["enc_miss"]), int(c["varp"].get("request_tx", 0))


@pytest.mark.parametrize("offloads", [True, False], ids=["default", "wire-like"])
def test_a_remote_mac_in_use_stays_in_the_cache_and_the_map(make_lab: Callable[..., Lab],
                                                            monkeypatch: pytest.MonkeyPatch, offloads: bool) -> None:
    """Default offloads: GRO after decap off, frames enter the bridge by the TAP; wire-like: on, by
    the GRO veth's bridge side (grolink.py). The bridge learns the MAC on either."""
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", "auto")
    lab = make_lab(hosts=2, varp=TIMERS, offloads=offloads)
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    ebpf = gk(lab, "h1").call("counters")["ebpf"]
    assert {v["vnet"]: v["path"] for v in ebpf["vnets"]} == {10: "ebpf"}
    assert ebpf["gro"]["gro_after_decap"] is (not offloads), ebpf["gro"]
    assert ping(lab, "a1", "10.0.0.2", count=2).returncode == 0  # resolved both ways
    before = {h: _snapshot(lab, h) for h in ("h1", "h2")}
    r = ping(lab, "a1", "10.0.0.2", count=60, interval=0.2)  # 12 s: three times ttl + stale_ttl
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
    after = {h: _snapshot(lab, h) for h in ("h1", "h2")}
    assert after == before, f"misses / REQUESTs (before, after): {before} {after}"
    macs = {lab.endpoints["a2"].mac: "h1", lab.endpoints["a1"].mac: "h2"}
    for mac, host in macs.items():
        entry = [e for e in gk(lab, host).call("varp.cache") if e["mac"] == mac]
        assert entry and entry[0]["state"] == "reachable" and float(entry[0]["age"]) < 2, entry
    ageing = gk(lab, "h1").call("counters")["ebpf"]["ageing"]
    assert ageing["confirmed"] >= 3 and ageing["errors"] == 0, ageing
