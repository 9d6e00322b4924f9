"""The eBPF data path in a lab (docs/ebpf.md): gatekeepers on `datapath = auto` (the default,
pinned here so that a forced-userspace run of the `vnet` tests still tests eBPF) put a security-none
VNET on eBPF; endpoints ping and talk TCP across it, the gatekeeper reports the path and the
programs' counters, and a secured VNET on the same hosts stays in userspace."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from softudc.lab import Lab
from softudc.lab import lab as lab_mod
from softudc.localapi import LocalApiError
from tests.e2e.conftest import create_vnet, endpoints, gk, ns_run, ping

pytestmark = pytest.mark.vnet
REPO = Path(__file__).resolve().parents[2]
READ_FDB = ("import json,sys;from pathlib import Path;from gatekeeper.vnet.bpf.loader import Datapath;"
            "dp=Datapath(Path(sys.argv[1]));print(json.dumps(sorted([k.vnet,k.mac,ip] for k,ip in dp.fdb().items())))")


def pinned_fdb(lab: Lab, host: str) -> list[list[object]]:
    """ebs_fdb as pinned by the host's gatekeeper, read through the loader's layouts inside its mount
    namespace (`ip netns exec` gives the gatekeeper one of its own; its bpffs is mounted there)."""
    h = lab.host(host)
    pin_dir = Path(h.api_socket).with_name("bpf")
    r = subprocess.run(["nsenter", "-t", str(h.pid), "-m", "-n", sys.executable, "-c", READ_FDB, str(pin_dir)],
                       capture_output=True, text=True, timeout=30, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    out: list[list[object]] = json.loads(r.stdout)
    return out


SEND = """
import sys
from scapy.all import IP, UDP, Raw, conf, send
conf.verb = 0
dst, stranger = sys.argv[1], sys.argv[2]
frame = bytes.fromhex("ffffffffffff020000000502") + b"\\x08\\x06" + bytes(28)
def msg(vword, body=frame):
    return b"\\x00\\x02\\x00\\x00" + vword.to_bytes(2, "big") + body
for payload, src, udp_len in ((msg(0x4000 | 10), None, None),  # EtherIP version 4: malformed
                              (msg(0x3000), None, None),  # VNET id 0: malformed
                              (msg(0x300A, frame[:5]), None, None),  # inner frame cut short: truncated
                              (msg(0x300A, b""), None, 100),  # UDP length claims more: truncated
                              (msg(0x3000 | 999), None, None),  # a VNET this host does not carry
                              (msg(0x300A), stranger, None)):  # VNET 10 from a non-member address
    ip = IP(dst=dst, src=src) if src else IP(dst=dst)
    udp = UDP(sport=1798, dport=1798, len=udp_len) if udp_len else UDP(sport=1798, dport=1798)
    send(ip / udp / Raw(payload))
"""


def send_adversarial(lab: Lab, src_host: str, dst_host: str) -> None:
    """Crafted datagrams from src_host's namespace to dst_host's underlay address (scapy, raw IP)."""
    stranger = lab.host(src_host).underlay_ip.rsplit(".", 1)[0] + ".250"
    ns_run(lab.host(src_host).netns, sys.executable, "-c", SEND, lab.host(dst_host).underlay_ip, stranger)


SERVER = ("import socket,sys;s=socket.create_server((sys.argv[1],5001));print('listening',flush=True);"
          "c,_=s.accept();n=0\nwhile (b:=c.recv(65536)): n+=len(b)\nprint(n)")
CLIENT = ("import socket,sys,time\nfor i in range(50):\n try: c=socket.create_connection((sys.argv[1],5001),"
          "timeout=10);break\n except OSError: time.sleep(0.1)\nc.sendall(bytes(int(sys.argv[2])));c.close()")


def tcp_bytes(lab: Lab, src: str, dst: str, dst_ip: str, size: int) -> int:
    """Bytes a listener on endpoint `dst` got from endpoint `src` sending `size` over one TCP
    connection (python at both ends); 0 when it did not connect."""
    server = subprocess.Popen(["ip", "netns", "exec", lab.endpoints[dst].netns, "python3", "-c", SERVER, dst_ip],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        ns_run(lab.endpoints[src].netns, "python3", "-c", CLIENT, dst_ip, str(size), check=False, timeout=60)
        out, _ = server.communicate(timeout=30)
        return int(out.strip() or 0)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def assert_maps_equal_cache(lab: Lab, host: str, vnets: set[int]) -> None:
    """The host's ebs_fdb holds exactly its VARP cache's resolved entries of its eBPF VNETs."""
    for _ in range(20):  # the VARP tick (0.25 s) copies the cache into the map
        want = sorted([e["vnet"], e["mac"], e["addr"]] for e in gk(lab, host).call("varp.cache")
                      if e["state"] in ("reachable", "stale") and e["vnet"] in vnets)
        have = pinned_fdb(lab, host)
        if have == want:
            return
        time.sleep(0.25)
    raise AssertionError(f"{host}: ebs_fdb {have} != VARP cache {want}")


def _auto_lab(make_lab: Callable[..., Lab], monkeypatch: pytest.MonkeyPatch) -> Lab:
    """A 2-host lab whose gatekeepers run `datapath = auto`, whatever SOFTUDC_LAB_DATAPATH says."""
    monkeypatch.setenv("SOFTUDC_LAB_DATAPATH", "auto")
    return make_lab(hosts=2)


def _set_datapath(lab: Lab, monkeypatch: pytest.MonkeyPatch, paths: dict[str, str]) -> None:
    """Restart the gatekeepers named in `paths` with that `dataplane.datapath`."""
    monkeypatch.delenv("SOFTUDC_LAB_DATAPATH", raising=False)  # the line below sets it instead
    plain = lab_mod.gatekeeper_config
    monkeypatch.setattr(lab_mod, "gatekeeper_config", lambda lab, host: plain(lab, host).replace(
        "[dataplane]\n", f'[dataplane]\ndatapath = "{paths.get(host.name, "auto")}"\n'))
    for name in paths:
        lab_mod.stop_gatekeeper(lab.host(name))
        lab_mod.start_gatekeeper(lab, lab.host(name))
    lab.save()  # the new PIDs, for `lab down`


def test_plain_vnet_runs_on_ebpf_and_secured_stays_userspace(make_lab: Callable[..., Lab],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _auto_lab(make_lab, monkeypatch)
    create_vnet(lab, 10)
    keys = {"send_epoch": 1, "secrets": {"1": secrets.token_hex(32)}}
    create_vnet(lab, 20, security="conf", keys=keys)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24"),
                    "s1": ("h1", 20, "10.0.1.1/24"), "s2": ("h2", 20, "10.0.1.2/24")})
    paths = {v["vnet"]: v["path"] for v in gk(lab, "h1").call("counters")["ebpf"]["vnets"]}
    assert paths == {10: "ebpf", 20: "userspace"}, gk(lab, "h1").call("counters")["ebpf"]
    before = gk(lab, "h2").call("counters")["ebpf"]["counters"]
    for src, dst in (("a1", "10.0.0.2"), ("s1", "10.0.1.2")):
        r = ping(lab, src, dst, count=5)
        assert r.returncode == 0, f"{src} -> {dst}:\n{r.stdout}{r.stderr}"
    r = ping(lab, "a1", "10.0.0.2", count=3, size=1424, df=True)  # the full 1452-byte MTU
    assert r.returncode == 0, r.stdout
    assert tcp_bytes(lab, "a1", "a2", "10.0.0.2", 2_000_000) == 2_000_000
    after = gk(lab, "h2").call("counters")["ebpf"]["counters"]
    assert after["dec_ok"] - before["dec_ok"] >= 5  # VNET 10's frames were decapsulated in BPF
    assert after["dec_non_member"] == after["dec_malformed"] == 0
    assert_maps_equal_cache(lab, "h1", {10})


def test_an_ebpf_host_and_a_userspace_host_share_a_vnet(make_lab: Callable[..., Lab],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _auto_lab(make_lab, monkeypatch)
    _set_datapath(lab, monkeypatch, {"h2": "userspace"})
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    assert [v["path"] for v in gk(lab, "h1").call("counters")["ebpf"]["vnets"]] == ["ebpf"]
    assert [v["path"] for v in gk(lab, "h2").call("counters")["ebpf"]["vnets"]] == ["userspace"]
    for src, dst in (("a1", "10.0.0.2"), ("a2", "10.0.0.1")):
        r = ping(lab, src, dst, count=5)
        assert r.returncode == 0, f"{src} -> {dst}:\n{r.stdout}{r.stderr}"
    time.sleep(1.5)  # a VARP tick copies the resolved entry into ebs_fdb
    assert ping(lab, "a1", "10.0.0.2", count=3).returncode == 0
    ebpf = gk(lab, "h1").call("counters")["ebpf"]["counters"]
    assert ebpf["dec_ok"] >= 5  # the userspace host's frames, decapsulated in BPF
    assert ebpf["enc_unicast"] >= 1  # once VARP filled the FDB, h1 sent in BPF
    assert_maps_equal_cache(lab, "h1", {10})
    assert pinned_fdb(lab, "h1"), "a2's MAC resolved by VARP is in the map"
    # TCP both ways: h1's frames reach h2's forwarder with partial checksums and as whole GSO
    # super-frames (a veth underlay); h2's flagged-partial ones go up to h1's forwarder
    sent = gk(lab, "h1").call("counters")["ebpf"]["counters"]["enc_unicast"]
    for src, dst, ip in (("a1", "a2", "10.0.0.2"), ("a2", "a1", "10.0.0.1")):
        assert tcp_bytes(lab, src, dst, ip, 2_000_000) == 2_000_000, f"TCP {src} -> {dst}"
    assert gk(lab, "h1").call("counters")["ebpf"]["counters"]["enc_unicast"] - sent >= 10  # through BPF
    h2 = gk(lab, "h2").call("counters")
    print("h2 (userspace) counters:", {k: v for k, v in h2.items() if k in ("drops", "rx_fixed")})
    assert "oversize" not in h2["drops"], h2["drops"]  # h1's whole super-frames were taken, not dropped
    # finished by h2's receive path (gatekeeper/vnet/unflagged.py): the lab's underlay is veth
    assert h2["rx_fixed"].get("partial_csum", 0) > 0 and h2["rx_fixed"].get("superframe", 0) > 0, h2["rx_fixed"]
    # adversarial datagrams into h1's underlay: dropped and counted by reason; forwarding continues
    before = gk(lab, "h1").call("counters")["ebpf"]["counters"]
    send_adversarial(lab, "h2", "h1")
    time.sleep(0.3)  # the last datagram crossed the bridge
    after = gk(lab, "h1").call("counters")["ebpf"]["counters"]
    delta = {k: after[k] - before[k] for k in ("dec_malformed", "dec_truncated", "dec_unknown_vnet", "dec_non_member")}
    assert delta == {"dec_malformed": 2, "dec_truncated": 2, "dec_unknown_vnet": 1, "dec_non_member": 1}, delta
    for src, dst in (("a1", "10.0.0.2"), ("a2", "10.0.0.1")):
        r = ping(lab, src, dst, count=3)
        assert r.returncode == 0, f"after the adversarial datagrams, {src} -> {dst}:\n{r.stdout}{r.stderr}"
    gk(lab, "h1").call("varp.flush")  # the cache emptied: the map follows
    assert_maps_equal_cache(lab, "h1", {10})


def clsact(lab: Lab, host: str, dev: str) -> bool:
    return "clsact" in ns_run(lab.host(host).netns, "tc", "qdisc", "show", "dev", dev).stdout


def test_stop_removes_the_programs_and_a_restart_puts_them_back(make_lab: Callable[..., Lab],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 7: a stopped gatekeeper leaves no qdisc/program on the underlay; a restarted one attaches
    again and traffic resumes (the loss across the restart is printed: the TAPs go with the process)."""
    lab = _auto_lab(make_lab, monkeypatch)
    create_vnet(lab, 10)
    endpoints(lab, {"a1": ("h1", 10, "10.0.0.1/24"), "a2": ("h2", 10, "10.0.0.2/24")})
    assert ping(lab, "a1", "10.0.0.2", count=3).returncode == 0
    assert clsact(lab, "h1", "ul0")
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.endpoints["a1"].netns, "ping", "-q", "-i", "0.1", "-w", "8",
                               "10.0.0.2"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    lab_mod.stop_gatekeeper(lab.host("h1"))
    assert not clsact(lab, "h1", "ul0"), "the stopped gatekeeper left its clsact qdisc on the underlay"
    lab_mod.start_gatekeeper(lab, lab.host("h1"))
    lab.save()
    out, _ = pinger.communicate(timeout=30)
    print("ping across the restart:", out.strip().splitlines()[-2:])
    assert clsact(lab, "h1", "ul0")
    for _ in range(40):
        vnets = gk(lab, "h1").call("counters")["ebpf"]["vnets"]
        if vnets:
            break
        time.sleep(0.25)
    assert [v["path"] for v in vnets] == ["ebpf"], vnets
    r = ping(lab, "a1", "10.0.0.2", count=3)
    assert r.returncode == 0, f"after the restart:\n{r.stdout}{r.stderr}"
    restart_in_place_loses_nothing(lab)


def restart_in_place_loses_nothing(lab: Lab) -> None:
    """Item 7: a restart in place (SIGUSR1, gatekeeper/vnet/bpf/handover.py) keeps programs, pinned
    maps and TAPs; a ping every 10 ms across it loses nothing, and the new gatekeeper runs eBPF."""
    h1 = lab.host("h1")
    time.sleep(1.0)  # a VARP tick put a2's MAC into ebs_fdb: known unicast goes by BPF alone
    fdb = pinned_fdb(lab, "h1")
    uptime = gk(lab, "h1").call("status")["uptime"]
    pinger = subprocess.Popen(["ip", "netns", "exec", lab.endpoints["a1"].netns, "ping", "-q", "-n", "-i", "0.01",
                               "-c", "400", "10.0.0.2"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert h1.pid
    t0 = time.monotonic()
    os.kill(h1.pid, signal.SIGUSR1)
    while True:  # the same PID answers again, with a new uptime
        try:
            if gk(lab, "h1").call("status")["uptime"] < uptime:
                break
        except (OSError, LocalApiError):
            pass
        assert time.monotonic() - t0 < 20, "the gatekeeper did not come back from its restart in place"
        time.sleep(0.05)
    back_s = time.monotonic() - t0
    out, _ = pinger.communicate(timeout=30)
    stats = next(line for line in out.splitlines() if "packets transmitted" in line)
    print(f"restart in place: answering again after {back_s:.2f} s; ping every 10 ms: {stats}")
    assert " 0% packet loss" in stats, out
    assert [v["path"] for v in gk(lab, "h1").call("counters")["ebpf"]["vnets"]] == ["ebpf"]
    assert pinned_fdb(lab, "h1") == fdb  # adopted, and the VARP cache seeded from it kept it
    assert_maps_equal_cache(lab, "h1", {10})
