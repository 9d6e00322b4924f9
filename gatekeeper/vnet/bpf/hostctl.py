"""Bring one host's eBPF data path up or down from a JSON spec (run inside the host's netns).

    python -m gatekeeper.vnet.bpf.hostctl up SPEC.json | down SPEC.json | counters SPEC.json
                                          | events SPEC.json SECONDS

SPEC: {"pin_dir", "underlay", "local_ip", "vnets": [{"vnet", "uplink", "members": [ip...],
       "fdb": {mac: ip}, "ingress_ifname": optional, "mtu": optional, "hook": "ingress"|"egress",
       "gro": "auto"|"on"|"off" (optional)}],
       "punt": bool (misses and floods go on to the uplink instead of being flooded here),
       "learn": bool (floods from a MAC the FDB does not place at its sender go up to the socket)}
tc programs live on the devices (they outlive this process); maps stay pinned under pin_dir.

A VNET whose uplink is a veth and whose `ingress_ifname` is its bridge-side peer gets GRO after
decapsulation chosen for the underlay (gro.py; `gro` forces it): on, decapsulated frames are sent
out of the uplink and merged by the peer's NAPI GRO; off, they enter the peer's ingress directly.
`up` prints {"gro": {vnet: choice}} for those VNETs.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from gatekeeper.vnet.bpf import gro, layouts
from gatekeeper.vnet.bpf.events import EventReader
from gatekeeper.vnet.bpf.loader import Datapath, detach, remove_pins

BPF_F_INGRESS = 1


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise SystemExit(f"hostctl: no network device {name!r} in this namespace") from None


def up(spec: dict[str, Any]) -> tuple[Datapath, dict[int, gro.GroChoice]]:
    dp = Datapath(Path(spec["pin_dir"]))
    underlay = _ifindex(spec["underlay"])
    Path(f"/proc/sys/net/ipv4/conf/{spec['underlay']}/forwarding").write_text("1\n")  # bpf_fib_lookup
    flags = (layouts.CFG_PUNT if spec.get("punt") else 0) | (layouts.CFG_LEARN if spec.get("learn") else 0)
    dp.set_cfg(layouts.Cfg(spec["local_ip"], underlay, flags))
    want: dict[layouts.FdbKey, str] = {}
    choices: dict[int, gro.GroChoice] = {}
    for v in spec["vnets"]:
        uplink = _ifindex(v["uplink"])
        local, choice = _local(spec["underlay"], v, uplink)
        if choice is not None:
            choices[v["vnet"]] = choice
        dp.set_uplink(uplink, v["vnet"])
        dp.set_local(v["vnet"], local, v["members"])
        want.update({layouts.FdbKey(v["vnet"], mac.lower()): ip for mac, ip in v.get("fdb", {}).items()})
        dp.attach("vnet_encap", uplink, egress=v.get("hook") == "egress")
    dp.sync_fdb(want)
    dp.attach("vnet_decap", underlay)
    return dp, choices


def _local(underlay: str, v: dict[str, Any], uplink: int) -> tuple[layouts.Local, gro.GroChoice | None]:
    """Where decapsulated frames of VNET `v` go, and the GRO choice when its uplink is a veth pair."""
    mtu = v.get("mtu", 1452)
    peer = v.get("ingress_ifname")
    if not peer:
        return layouts.Local(uplink, 0, mtu), None
    if peer == v["uplink"]:  # a TAP: no NAPI hop to merge in
        return layouts.Local(_ifindex(peer), BPF_F_INGRESS, mtu), None
    setting = v.get("gro", "auto")
    if setting not in ("auto", "on", "off"):
        raise SystemExit(f"hostctl: vnet {v['vnet']}: gro {setting!r}, expected 'auto', 'on' or 'off'")
    choice = gro.choose_for(underlay)
    if setting != "auto":
        choice = gro.GroChoice(choice.device, choice.driver, setting == "on", f"forced {setting} by the spec")
    gro.apply_veth(choice, v["uplink"], peer)
    if choice.on:
        return layouts.Local(uplink, 0, mtu), choice  # out of the uplink: the peer's GRO merges
    return layouts.Local(_ifindex(peer), BPF_F_INGRESS, mtu), choice


def down(spec: dict[str, Any]) -> None:
    for name in [spec["underlay"]] + [v["uplink"] for v in spec["vnets"]]:
        try:
            detach(socket.if_nametoindex(name))
        except OSError:
            continue
    remove_pins(Path(spec["pin_dir"]))


def print_events(spec: dict[str, Any], seconds: float) -> None:
    """Print ring-buffer events as JSON lines for `seconds` (ready once "listening" is printed)."""
    dp = Datapath(Path(spec["pin_dir"]))
    reader = EventReader(dp.fds["ebs_events"])
    print("listening", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for ev in reader.poll(100):
            print(json.dumps({"kind": ev.kind, "vnet": ev.vnet, "mac": ev.mac, "ip": ev.ip}), flush=True)
    reader.close()
    dp.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] not in ("up", "down", "counters", "events"):
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    if argv[0] == "up":
        dp, choices = up(spec)
        dp.close()
        print(json.dumps({"gro": {v: c.as_dict() for v, c in choices.items()}}))
    elif argv[0] == "down":
        down(spec)
    elif argv[0] == "events":
        print_events(spec, float(argv[2]) if len(argv) == 3 else 1.0)
    else:
        dp = Datapath(Path(spec["pin_dir"]))
        print(json.dumps({"counters": dp.counters(), "fdb": {f"{k.vnet}/{k.mac}": ip for k, ip in dp.fdb().items()},
                          "vstats": {v["vnet"]: dp.vnet_stats(v["vnet"]) for v in spec["vnets"]}}))
        dp.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
