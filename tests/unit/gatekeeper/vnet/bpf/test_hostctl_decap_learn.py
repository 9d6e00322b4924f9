"""vnet_decap under CFG_LEARN (a gatekeeper whose forwarder learns): a flooded frame from a MAC the
FDB does not place at its sender (new here, or moved: a migrated VM's RARP) goes up to the socket,
where the forwarder learns it; everything else is decapsulated as before. Real BPF, in the two-host
namespace lab of test_hostctl (imported: the `lab` fixture builds its own for this module)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.unit.gatekeeper.vnet.bpf.test_hostctl import HOSTS, PFX, VNET, _send, counters, hostctl, lab, sh

__all__ = ["lab"]  # the fixture, used by name
MOVED = "02:00:00:00:05:99"  # a MAC that moves to host B
PREFIX = b"\x00\x02\x00\x00" + (0x3000 | VNET).to_bytes(2, "big")
RARP = bytes.fromhex("ffffffffffff" + MOVED.replace(":", "")) + b"\x80\x35" + bytes(28)
UNICAST = bytes.fromhex(HOSTS["A"]["mac"].replace(":", "") + MOVED.replace(":", "")) + b"\x08\x06" + bytes(28)
# Prints the first datagram equal to argv[1]: chatter the lab's interfaces flood (an IGMPv3 report from
# a MAC not in the FDB goes up too) may arrive first.
LISTEN = ("import socket,sys,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('10.0.0.1',1798));"
          "s.settimeout(1);print('ready',flush=True);end=time.monotonic()+15;d=b''\n"
          "while time.monotonic()<end and d.hex()!=sys.argv[1]:\n"
          " try: d=s.recv(200)\n"
          " except TimeoutError: pass\n"
          "print(d.hex())")


def _up(lab: dict[str, Path], learn: bool, fdb: dict[str, str]) -> None:
    spec: dict[str, Any] = json.loads(lab["A"].read_text())
    spec["learn"] = learn
    spec["vnets"][0]["fdb"] = {HOSTS["B"]["mac"]: HOSTS["B"]["ip"], **fdb}  # B's endpoint: known
    lab["A"].write_text(json.dumps(spec))
    hostctl(f"{PFX}hA", "up", lab["A"])


def _quiet(lab: dict[str, Path]) -> None:
    """Wait (at most 6 s) until host A's decap counters stay still for a second: the reports an
    interface repeats after it comes up or joins a group (IGMPv3, about 1 s apart) are over."""
    last, since, end = None, time.monotonic(), time.monotonic() + 6
    while time.monotonic() < end:
        now = {k: counters(lab, "A")["counters"][k] for k in ("dec_ok", "dec_pass")}
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return
        time.sleep(0.2)


def _delta(lab: dict[str, Path], payload: bytes) -> tuple[int, int]:
    """(decapsulated, passed up) for one datagram from host B."""
    _quiet(lab)
    before = counters(lab, "A")["counters"]
    _send(payload)
    after = counters(lab, "A")["counters"]
    return after["dec_ok"] - before["dec_ok"], after["dec_pass"] - before["dec_pass"]


def test_a_flood_from_a_mac_new_here_or_moved_goes_up_once_the_rest_stays_in_bpf(lab: dict[str, Path]) -> None:
    for ns in (f"{PFX}{role}{h}" for role in "he" for h in HOSTS):  # no IPv6 chatter in the counts
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=ns)
    time.sleep(0.3)
    try:
        _up(lab, learn=False, fdb={})
        assert _delta(lab, PREFIX + RARP) == (1, 0)  # without CFG_LEARN: decapsulated (hostctl's default)
        _up(lab, learn=True, fdb={})
        rx = subprocess.Popen(["ip", "netns", "exec", f"{PFX}hA", sys.executable, "-c", LISTEN, (PREFIX + RARP).hex()],
                              stdout=subprocess.PIPE, text=True)
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        assert _delta(lab, PREFIX + RARP) == (0, 1)  # MAC unknown here: up to the socket, which gets it whole
        out, _ = rx.communicate(timeout=10)
        assert out.strip() == (PREFIX + RARP).hex()
        assert _delta(lab, PREFIX + UNICAST) == (1, 0)  # unicast from it: never held back
        _up(lab, learn=True, fdb={MOVED: HOSTS["B"]["ip"]})  # what the forwarder's learning writes
        assert _delta(lab, PREFIX + RARP) == (1, 0)  # the FDB places it at its sender: stays in BPF
        _up(lab, learn=True, fdb={MOVED: "10.0.0.7"})  # the MAC moved from 10.0.0.7 to B
        assert _delta(lab, PREFIX + RARP) == (0, 1)
        multicast_src = PREFIX + RARP[:6] + b"\x03" + RARP[7:]
        assert _delta(lab, multicast_src) == (1, 0)  # a group MAC as source is nothing to learn
    finally:
        _up(lab, learn=False, fdb={})
