"""bridgefdb: the RTM_GETNEIGH dump's parser on built and arbitrary bytes (hypothesis), and one real
dump of a bridge in a namespace of our own (root only; skipped otherwise, with the reason)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.vnet.bpf import bridgefdb as bf

MAC = bytes.fromhex("020000000a01")


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + bytes(-len(raw) % 4)


def neigh(ifindex: int, mac: bytes, updated: int = 150, used: int = 20, state: int = 0x02,
          family: int = bf.AF_BRIDGE, cacheinfo: bool = True) -> bytes:
    body = bf.NDMSG.pack(family, ifindex, state, 0, 0) + attr(bf.NDA_LLADDR, mac)
    if cacheinfo:
        body += attr(bf.NDA_CACHEINFO, bf.CACHEINFO.pack(0, used, updated, 0))
    return bf.NLMSGHDR.pack(bf.NLMSGHDR.size + len(body), bf.RTM_NEWNEIGH, 2, 1, 0) + body


DONE = bf.NLMSGHDR.pack(bf.NLMSGHDR.size + 4, bf.NLMSG_DONE, 2, 1, 0) + bytes(4)


def test_learned_entries_with_their_ages_in_seconds() -> None:
    entries, done = bf.parse(neigh(4, MAC) + neigh(5, MAC[::-1], updated=0, used=7))
    assert not done
    assert entries == [bf.FdbAge(4, MAC, 1.5, 0.2), bf.FdbAge(5, MAC[::-1], 0.0, 0.07)]
    assert bf.parse(neigh(4, MAC) + DONE) == ([bf.FdbAge(4, MAC, 1.5, 0.2)], True)


def test_permanent_foreign_and_ageless_entries_are_left_out() -> None:
    buf = (neigh(4, MAC, state=bf.NUD_PERMANENT) + neigh(4, MAC, family=socket.AF_INET)
           + neigh(4, MAC, cacheinfo=False) + DONE)
    assert bf.parse(buf) == ([], True)


def test_an_error_answer_raises_with_its_errno() -> None:
    err = bf.NLMSGHDR.pack(bf.NLMSGHDR.size + 4, bf.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1)
    with pytest.raises(bf.BridgeFdbError) as info:
        bf.parse(err)
    assert info.value.errno == 1


@given(st.binary(max_size=600))
def test_any_bytes_parse_bounded_or_raise_only_the_dump_error(buf: bytes) -> None:
    try:
        entries, _ = bf.parse(buf)
    except bf.BridgeFdbError:
        return
    assert all(len(e.mac) == 6 and e.updated >= 0 and e.used >= 0 for e in entries)


@given(st.binary(max_size=80), st.integers(0, 120))
def test_a_cut_or_garbled_tail_keeps_the_entries_before_it(tail: bytes, cut: int) -> None:
    good = neigh(4, MAC)
    try:
        entries, _ = bf.parse(good + (good + tail)[:cut])
    except bf.BridgeFdbError:
        return
    assert entries[0] == bf.FdbAge(4, MAC, 1.5, 0.2)


def test_the_request_is_a_bridge_neighbour_dump() -> None:
    req = bf.request(9)
    length, kind, flags, seq, _ = bf.NLMSGHDR.unpack_from(req)
    assert (length, kind, flags & bf.NLM_F_DUMP, seq) == (len(req), bf.RTM_GETNEIGH, bf.NLM_F_DUMP, 9)
    assert bf.NDMSG.unpack_from(req, bf.NLMSGHDR.size)[0] == bf.AF_BRIDGE


NS = f"fdba{os.getpid() % 100000}"
SEND = ("import socket;s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW);s.bind(('v1',0));"
        "s.send(bytes.fromhex('ffffffffffff020000000a01')+b'\\x08\\x06'+bytes(28))")
READ = ("import socket;from gatekeeper.vnet.bpf import bridgefdb as b;i=socket.if_nametoindex('v0');"
        "print(*[e.mac.hex() for e in b.dump() if e.ifindex==i])")


@pytest.mark.parametrize("gro_port", [False, True])
def test_a_real_dump_names_the_mac_learned_on_the_port(gro_port: bool) -> None:
    """Also on a port set as grolink sets the GRO veth's bridge side (no floods, isolated): it learns."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace of our own needs root")

    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout

    sh("ip", "netns", "add", NS)
    try:
        for cmd in (("link", "add", "br0", "type", "bridge"),
                    ("link", "add", "v0", "type", "veth", "peer", "name", "v1"),
                    ("link", "set", "v0", "master", "br0", "up"), ("link", "set", "br0", "up"),
                    ("link", "set", "v1", "up")):
            sh("ip", "-n", NS, *cmd)
        if gro_port:
            sh("ip", "netns", "exec", NS, "bridge", "link", "set", "dev", "v0", "flood", "off", "mcast_flood", "off",
               "bcast_flood", "off", "isolated", "on")
        sh("ip", "netns", "exec", NS, "python3", "-c", SEND)
        out = subprocess.run(["ip", "netns", "exec", NS, sys.executable, "-c", READ], check=True,
                             capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[5]).stdout
        assert "020000000a01" in out.split(), out  # learned on v0, the port its frame came in by
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, timeout=30)
