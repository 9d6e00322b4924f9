"""The eBPF data path on real BPF: two host namespaces, a veth underlay, a bridge per host.

Skips (with the reason) only when not root or BPF/tc programs cannot be loaded here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.vnet.bpf.loader import default_object, ensure_bpffs, remove_pins

VNET = 1234 & 0xFFF
PFX = f"ebt{os.getpid() % 100000}"
HOSTS = {
    "A": {"ip": "10.0.0.1", "ep": "192.168.5.1", "mac": "02:00:00:00:05:01"},
    "B": {"ip": "10.0.0.2", "ep": "192.168.5.2", "mac": "02:00:00:00:05:02"},
}


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=60)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(full)} -> {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def hostctl(ns: str, verb: str, spec: Path) -> str:
    return sh(sys.executable, "-m", "gatekeeper.vnet.bpf.hostctl", verb, str(spec), ns=ns)


def _build(tmp: Path) -> dict[str, Path]:
    for h in HOSTS:
        for role in ("h", "e"):
            ns = f"{PFX}{role}{h}"
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", f"{PFX}hA", "link", "add", "uA", "type", "veth", "peer", "name", "uB", "netns", f"{PFX}hB")
    specs = {}
    for h, c in HOSTS.items():
        hn, en = f"{PFX}h{h}", f"{PFX}e{h}"
        sh("ip", "-n", hn, "addr", "add", f"{c['ip']}/24", "dev", f"u{h}")
        sh("ip", "-n", hn, "link", "set", f"u{h}", "up")
        sh("ip", "-n", hn, "link", "add", "br-v", "type", "bridge")
        sh("ip", "-n", hn, "link", "set", "br-v", "up")
        sh("ip", "-n", en, "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns", hn)
        sh("ip", "-n", en, "link", "set", "eth0", "address", c["mac"], "mtu", "1452", "up")
        sh("ip", "-n", en, "addr", "add", f"{c['ep']}/24", "dev", "eth0")
        sh("ip", "-n", hn, "link", "set", "p0", "master", "br-v", "up")
        sh("ip", "-n", hn, "link", "add", "vl0", "type", "veth", "peer", "name", "vb0")
        sh("ip", "-n", hn, "link", "set", "vb0", "master", "br-v", "up")
        sh("ip", "-n", hn, "link", "set", "vl0", "up")
        spec: dict[str, Any] = {
            "pin_dir": str(tmp / f"bpf{h}"), "underlay": f"u{h}", "local_ip": c["ip"],
            "vnets": [{"vnet": VNET, "uplink": "vl0", "members": [x["ip"] for x in HOSTS.values()], "fdb": {}}],
        }
        specs[h] = tmp / f"spec{h}.json"
        specs[h].write_text(json.dumps(spec))
    return specs


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    if os.geteuid() != 0:
        pytest.skip("eBPF data path test needs root (namespaces, bpffs, tc)")
    if not default_object().exists():
        pytest.skip(f"{default_object()} not built: run scripts/build-bpf.sh (make bootstrap)")
    tmp = tmp_path_factory.mktemp("ebpf")
    try:
        specs = _build(tmp)
        for h in HOSTS:  # mount in the root namespace so every `ip netns exec` child sees the pins
            ensure_bpffs(tmp / f"bpf{h}")
        for h in HOSTS:
            hostctl(f"{PFX}h{h}", "up", specs[h])
        sh("ping", "-c1", "-W2", HOSTS["B"]["ip"], ns=f"{PFX}hA")  # resolve the underlay neighbour
        yield specs
    finally:
        for h in HOSTS:
            if (tmp / f"spec{h}.json").exists():
                hostctl(f"{PFX}h{h}", "down", tmp / f"spec{h}.json")
            remove_pins(tmp / f"bpf{h}")  # the bpffs was mounted in this (root) mount namespace
            for role in ("h", "e"):
                sh("ip", "netns", "del", f"{PFX}{role}{h}", check=False)


def counters(lab: dict[str, Path], h: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(hostctl(f"{PFX}h{h}", "counters", lab[h]))
    return out


def test_ping_and_tcp_cross_the_vnet(lab: dict[str, Path]) -> None:
    start = counters(lab, "B")
    before = start["counters"]
    sh("ping", "-c3", "-i0.2", "-W2", HOSTS["B"]["ep"], ns=f"{PFX}eA")
    sh("ping", "-c2", "-M", "do", "-s", "1424", "-W2", HOSTS["B"]["ep"], ns=f"{PFX}eA")  # full 1452 MTU
    end = counters(lab, "B")
    after = end["counters"]
    assert after["dec_ok"] - before["dec_ok"] >= 5
    rx_frames, rx_bytes = (end["vstats"][str(VNET)][i] - start["vstats"][str(VNET)][i] for i in (2, 3))
    assert rx_frames >= 5 and rx_bytes >= 2 * (1452 + 14)  # per-VNET: the two full-size replies at least
    assert counters(lab, "A")["counters"]["enc_flood_copy"] >= 1  # the ARP request was flooded


def test_unknown_unicast_is_flooded_and_reported_then_fdb_takes_over(lab: dict[str, Path]) -> None:
    spec = json.loads(lab["A"].read_text())
    spec["vnets"][0]["fdb"] = {HOSTS["B"]["mac"]: HOSTS["B"]["ip"]}
    lab["A"].write_text(json.dumps(spec))
    hostctl(f"{PFX}hA", "up", lab["A"])  # a restart: re-adopts pins, replaces programs
    got = counters(lab, "A")
    assert got["fdb"] == {f"{VNET}/{HOSTS['B']['mac']}": HOSTS["B"]["ip"]}
    before = got["counters"]["enc_unicast"]
    sh("ping", "-c2", "-i0.2", "-W2", HOSTS["B"]["ep"], ns=f"{PFX}eA")
    assert counters(lab, "A")["counters"]["enc_unicast"] - before >= 2


def test_a_reloading_host_re_adopts_its_maps_and_programs_without_loss(lab: dict[str, Path]) -> None:
    """Item 7 at the loader: a new loader (a restarted gatekeeper) opens the object again, re-adopts
    the pinned maps (the FDB with them) and replaces the programs in place; a ping every 10 ms
    across three such reloads loses nothing."""
    spec = json.loads(lab["A"].read_text())
    spec["vnets"][0]["fdb"] = {HOSTS["B"]["mac"]: HOSTS["B"]["ip"]}
    lab["A"].write_text(json.dumps(spec))
    hostctl(f"{PFX}hA", "up", lab["A"])
    pinger = subprocess.Popen(["ip", "netns", "exec", f"{PFX}eA", "ping", "-q", "-n", "-i", "0.01", "-c", "300",
                               HOSTS["B"]["ep"]], stdout=subprocess.PIPE, text=True)
    for _ in range(3):
        hostctl(f"{PFX}hA", "up", lab["A"])
    out, _ = pinger.communicate(timeout=30)
    stats = next(line for line in out.splitlines() if "packets transmitted" in line)
    print("ping every 10 ms across 3 reloads:", stats)
    assert " 0% packet loss" in stats and pinger.returncode == 0, out
    assert counters(lab, "A")["fdb"] == {f"{VNET}/{HOSTS['B']['mac']}": HOSTS["B"]["ip"]}


def _send(payload: bytes, src: str = HOSTS["B"]["ip"]) -> None:
    code = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"s.bind(({src!r},0));s.sendto(bytes.fromhex(sys.argv[1]),({HOSTS['A']['ip']!r},1798))"
    )
    sh(sys.executable, "-c", code, payload.hex(), ns=f"{PFX}hB")


def test_bad_frames_are_dropped_and_counted_by_reason(lab: dict[str, Path]) -> None:
    frame = bytes.fromhex("ffffffffffff020000000502") + b"\x08\x06" + bytes(28)
    ok_prefix = b"\x00\x02\x00\x00" + (0x3000 | VNET).to_bytes(2, "big")
    sh("ip", "addr", "add", "10.0.0.9/24", "dev", "uB", ns=f"{PFX}hB", check=False)
    before = counters(lab, "A")["counters"]
    _send(b"\x00\x02\x00\x00" + (0x4000 | VNET).to_bytes(2, "big") + frame)  # EtherIP version 4
    _send(ok_prefix + frame[:5])  # truncated inner frame
    _send(b"\x00\x02\x00\x00" + (0x3000 | 999).to_bytes(2, "big") + frame)  # VNET not on this path
    _send(ok_prefix + frame, src="10.0.0.9")  # not a member host
    _send(b"\x00\x01\x00\x00" + bytes(16))  # VARP: left to the gatekeeper's socket
    after = counters(lab, "A")["counters"]
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k] and k.startswith("dec_") and k != "dec_ok"}
    assert delta == {"dec_malformed": 1, "dec_truncated": 1, "dec_unknown_vnet": 1, "dec_non_member": 1,
                     "dec_pass": 2}


def test_an_empty_member_list_takes_any_sender(lab: dict[str, Path]) -> None:
    """No member list (the VNET is on this host only so far): as on the userspace path, frames of
    any sender are taken; once members are set, a non-member's are dropped again."""
    spec = json.loads(lab["A"].read_text())
    members = spec["vnets"][0]["members"]
    frame = bytes.fromhex("ffffffffffff020000000502") + b"\x08\x06" + bytes(28)
    sh("ip", "addr", "add", "10.0.0.9/24", "dev", "uB", ns=f"{PFX}hB", check=False)
    try:
        spec["vnets"][0]["members"] = []
        lab["A"].write_text(json.dumps(spec))
        hostctl(f"{PFX}hA", "up", lab["A"])
        before = counters(lab, "A")["counters"]
        _send(b"\x00\x02\x00\x00" + (0x3000 | VNET).to_bytes(2, "big") + frame, src="10.0.0.9")
        after = counters(lab, "A")["counters"]
        assert after["dec_non_member"] == before["dec_non_member"] and after["dec_ok"] > before["dec_ok"]
    finally:
        spec["vnets"][0]["members"] = members
        lab["A"].write_text(json.dumps(spec))
        hostctl(f"{PFX}hA", "up", lab["A"])


BATCH = """
import socket, struct, sys
seg, n = 200, 4
eth = bytes.fromhex(sys.argv[1].replace(":", "")) + bytes.fromhex("020000000502") + b"\\x08\\x00"
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, seg - 6 - 14, 1, 0, 64, 17, 0, bytes(4), bytes(4))
frame = struct.pack("!HHH", 2, 0, 0x3000 | int(sys.argv[2])) + eth + ip
frame += bytes(seg - len(frame))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[3], 0))
s.setsockopt(socket.SOL_UDP, 103, seg)  # UDP_SEGMENT: one GSO skb of n datagrams
s.sendto(frame * n, (sys.argv[4], 1798))
"""


def test_a_batch_of_datagrams_in_one_skb_goes_up_not_half_decapsulated(lab: dict[str, Path]) -> None:
    """Several frame messages in one UDP GSO skb (a UDP_SEGMENT send over the veth underlay here;
    a NIC's GRO for the forwarder's UDP_GRO socket on real hardware): decap would strip the first
    header only, so the batch goes up to the socket (dec_pass), none of it decapsulated (dec_ok)."""
    before = counters(lab, "A")["counters"]
    sh(sys.executable, "-c", BATCH, HOSTS["A"]["mac"], str(VNET), HOSTS["B"]["ip"], HOSTS["A"]["ip"], ns=f"{PFX}hB")
    after = counters(lab, "A")["counters"]
    assert (after["dec_ok"] - before["dec_ok"], after["dec_pass"] - before["dec_pass"]) == (0, 1)


def test_socket_still_receives_varp(lab: dict[str, Path]) -> None:
    code = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('10.0.0.1',1798));"
        "s.settimeout(5);print(s.recv(100).hex())"
    )
    rx = subprocess.Popen(["ip", "netns", "exec", f"{PFX}hA", sys.executable, "-c", code],
                          stdout=subprocess.PIPE, text=True)
    import time

    time.sleep(0.5)
    _send(b"\x00\x01\x00\x00" + bytes(16))
    out, _ = rx.communicate(timeout=10)
    assert out.strip() == "00010000" + "00" * 16
    assert socket.inet_aton(HOSTS["A"]["ip"])  # keep the import honest


def test_a_miss_is_reported_on_the_ring_buffer_once_per_second(lab: dict[str, Path]) -> None:
    unknown = "02:00:00:00:05:77"
    rx = subprocess.Popen(["ip", "netns", "exec", f"{PFX}hA", sys.executable, "-m", "gatekeeper.vnet.bpf.hostctl",
                           "events", str(lab["A"]), "3"], stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None and rx.stdout.readline().strip() == "listening"
    sh("ip", "neigh", "replace", "192.168.5.77", "lladdr", unknown, "dev", "eth0", ns=f"{PFX}eA")
    sh("ping", "-c3", "-i0.2", "-W1", "192.168.5.77", ns=f"{PFX}eA", check=False)
    out, _ = rx.communicate(timeout=15)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # records not read before (earlier tests' misses) are still queued: look at this MAC only
    assert [e for e in events if e["mac"] == unknown] == [{"kind": 1, "vnet": VNET, "mac": unknown, "ip": "0.0.0.0"}]


def _features(ns: str, dev: str) -> dict[str, bool]:
    from gatekeeper.vnet.bpf.gro import parse_features

    return parse_features(sh("ethtool", "-k", dev, ns=ns))


@pytest.mark.parametrize("setting", ["on", "auto"])  # auto last: a default veth underlay -> off, the defaults back
def test_gro_after_decap_either_way_carries_full_mtu_and_tcp(lab: dict[str, Path], setting: str) -> None:
    """Item 5: with vb0 as the VNET's bridge-side peer, `up` chooses GRO after decap from the
    underlay (a default veth: off, frames enter vb0 directly) or is forced on (out of vl0, merged
    by vb0's GRO, vl0 without TSO); both carry full-MTU pings and a TCP stream."""
    choices = {}
    for h in HOSTS:
        spec = json.loads(lab[h].read_text())
        spec["vnets"][0].update(ingress_ifname="vb0", gro=setting)
        lab[h].write_text(json.dumps(spec))
        choices[h] = json.loads(hostctl(f"{PFX}h{h}", "up", lab[h]))["gro"][str(VNET)]
    want_on = setting == "on"
    assert [c["gro_after_decap"] for c in choices.values()] == [want_on, want_on], choices
    if setting == "auto":
        assert "passes GSO super-frames whole" in choices["A"]["reason"]
    ns = f"{PFX}hB"
    assert _features(ns, "vl0")["tx-tcp-segmentation"] is not want_on
    assert _features(ns, "vb0")["generic-receive-offload"] is want_on
    sh("ping", "-c2", "-i0.2", "-M", "do", "-s", "1424", "-W2", HOSTS["B"]["ep"], ns=f"{PFX}eA")
    server = subprocess.Popen(["ip", "netns", "exec", f"{PFX}eB", sys.executable, "-c",
                               "import socket;s=socket.create_server(('0.0.0.0',5001));c,_=s.accept();n=0\n"
                               "while (b:=c.recv(65536)): n+=len(b)\nprint(n)"], stdout=subprocess.PIPE, text=True)
    sh(sys.executable, "-c", "import socket,time\nfor i in range(50):\n try: c=socket.create_connection(("
       f"{HOSTS['B']['ep']!r},5001));break\n except OSError: time.sleep(0.1)\nc.sendall(bytes(4_000_000));c.close()",
       ns=f"{PFX}eA")
    out, _ = server.communicate(timeout=30)
    assert out.strip() == "4000000"


TAP_READER = """
import fcntl, os, select, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"vt0", 0x0002 | 0x1000))  # TUNSETIFF IFF_TAP|IFF_NO_PI
print("open", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    if select.select([fd], [], [], 0.1)[0]:
        print(os.read(fd, 65536)[:6].hex(":"), flush=True)
"""


def test_on_a_tap_known_unicast_skips_the_reader_and_misses_are_punted_to_it(lab: dict[str, Path]) -> None:
    """The userspace forwarder's place: encap on the TAP's egress, decap into the TAP's ingress."""
    ns = f"{PFX}hA"
    sh("ip", "tuntap", "add", "vt0", "mode", "tap", ns=ns)
    sh("ip", "link", "set", "vl0", "nomaster", ns=ns)
    sh("ip", "link", "set", "vt0", "master", "br-v", "up", ns=ns)
    reader = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", TAP_READER, "4"],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    spec = json.loads(lab["A"].read_text())
    spec["punt"] = True
    spec["vnets"][0].update(uplink="vt0", hook="egress", ingress_ifname="vt0",
                            fdb={HOSTS["B"]["mac"]: HOSTS["B"]["ip"]})
    lab["A"].write_text(json.dumps(spec))
    hostctl(ns, "up", lab["A"])
    before = counters(lab, "A")["counters"]
    sh("ip", "neigh", "replace", HOSTS["B"]["ep"], "lladdr", HOSTS["B"]["mac"], "dev", "eth0", ns=f"{PFX}eA")
    # a static neighbour with a MAC no FDB knows: a unicast miss (set here, so the test stands alone)
    sh("ip", "neigh", "replace", "192.168.5.77", "lladdr", "02:00:00:00:05:77", "dev", "eth0", ns=f"{PFX}eA")
    sh("ping", "-c3", "-i0.2", "-W2", HOSTS["B"]["ep"], ns=f"{PFX}eA")
    sh("ping", "-c1", "-W1", "192.168.5.77", ns=f"{PFX}eA", check=False)  # unknown unicast: punted
    out, _ = reader.communicate(timeout=15)
    after = counters(lab, "A")["counters"]
    seen = set(out.split()[1:])
    assert HOSTS["B"]["mac"] not in seen  # known unicast went out through BPF, not the TAP
    assert "02:00:00:00:05:77" in seen  # the miss reached the userspace reader
    assert after["enc_unicast"] - before["enc_unicast"] >= 3
    assert after["enc_punt"] > before["enc_punt"]
    assert after["dec_ok"] - before["dec_ok"] >= 3
