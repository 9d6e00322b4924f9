"""Garbage, truncated and oversized datagrams on UDP 1798 and protocol 97 are dropped and
counted, and the gatekeeper keeps forwarding: on both data paths (`auto`, where the eBPF programs
drop what is malformed or truncated for a VNET they carry and pass the rest up, and forced
`userspace`)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from softudc.lab import Lab
from tests.e2e.conftest import create_vnet, endpoints, gk, ns_run, ping, wait_until

pytestmark = pytest.mark.vnet
# The eBPF programs' drops (docs/ebpf.md) by the forwarder's reason for the same datagram.
BPF_REASONS = {"dec_malformed": "bad_frame", "dec_truncated": "bad_frame"}

SENDER = """
import os, random, socket, sys
dst = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 97)
rng = random.Random(1798)
eth = bytes(12) + b"\\x08\\x00"
bad = [
    b"\\x00",                                   # shorter than the message header
    b"\\x00\\x09\\x00\\x00" + bytes(20),           # unknown message id
    b"\\x00\\x02\\x00\\x00\\x40\\x0a" + eth,          # EtherIP version 4
    b"\\x00\\x02\\x00\\x00\\x30\\x0a" + bytes(5),     # truncated frame
    b"\\x00\\x02\\x80\\x00\\x30\\x0a" + eth,          # unknown flags
    b"\\x00\\x02\\x00\\x00\\x30\\x63" + eth,          # vnet 99: not a member here
    b"\\x00\\x02\\x00\\x00\\x30\\x0a" + bytes(9000),  # oversized frame for vnet 10
    b"\\x00\\x01\\x00\\x02" + bytes(10),           # truncated VARP
] + [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200))) for _ in range(200)]
for b in bad:
    u.sendto(b, (dst, 1798))
for b in [b"", b"\\x30", b"\\x40\\x00" + eth, b"\\x30\\x0b" + bytes(3), b"\\x30\\x0b" + bytes(9000)]:
    r.sendto(b, (dst, 0))
print(len(bad))
"""


@pytest.mark.parametrize("datapath", ["auto", "userspace"])
def test_garbage_is_dropped_counted_and_forwarding_goes_on(make_lab: Callable[..., Lab], datapath: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", datapath)
    lab = make_lab(hosts=2)
    create_vnet(lab, 10)
    create_vnet(lab, 11, transport="raw")
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24"),
                    "r1": ("h1", 11, "10.1.0.1/24"), "r2": ("h2", 11, "10.1.0.2/24")})
    h1 = lab.host("h1")
    ns_run(lab.host("h2").netns, sys.executable, "-c", SENDER, h1.underlay_ip)

    def drops() -> dict[str, int]:
        """h1's drops by reason, the forwarder's and the eBPF programs' together."""
        c = gk(lab, "h1").call("counters")
        merged = {**c["drops"], **{f"varp_{k}": v for k, v in c["varp"].items()}}
        for bpf, reason in BPF_REASONS.items():
            if c["ebpf"]["counters"].get(bpf):
                merged[reason] = merged.get(reason, 0) + c["ebpf"]["counters"][bpf]
        return merged

    expected = {"bad_message", "bad_frame", "not_member", "oversize", "varp_bad"}
    assert wait_until(lambda: expected <= set(drops()), timeout=5), drops()
    assert wait_until(lambda: drops()["bad_frame"] >= 7), drops()  # the same count on both paths
    d = drops()
    assert d["oversize"] >= 2, d
    bpf = gk(lab, "h1").call("counters")["ebpf"]["counters"]
    if datapath == "auto":  # VNET 10's bad frames were the programs' to drop; VNET 99's went up
        assert bpf["dec_malformed"] >= 1 and bpf["dec_truncated"] >= 1 and bpf["dec_unknown_vnet"] >= 1, bpf
    else:
        assert bpf == {}, bpf  # no programs loaded: the forwarder saw every datagram
    assert ping(lab, "a1", "10.0.0.2", count=2).returncode == 0
    assert ping(lab, "r1", "10.1.0.2", count=2).returncode == 0
    assert gk(lab, "h1").call("status")["host"] == "h1"
