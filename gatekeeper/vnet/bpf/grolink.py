"""The veth pair through which an eBPF VNET's decapsulated frames are merged by GRO (gro.py) before
its bridge, when GRO after decapsulation is chosen for the underlay.

    underlay ─ vnet_decap ─▶ vngd<ID> (egress, no TSO) ═veth═ vngb<ID> (GRO on) ─▶ vnbr<ID> ─▶ endpoints
    endpoints ─▶ vnbr<ID> ─ known unicast learned on vngb ─▶ vngd<ID> ingress: vnet_encap ─▶ underlay
                          └─ floods, misses ─▶ vntap<ID> (encap on its egress, punts to the forwarder)

On the bridge, vngb<ID> takes no floods (flood, mcast_flood, bcast_flood off: the TAP carries them
to the forwarder) and it and the TAP are isolated ports, so a remote frame arriving on one is never
sent back out through the other (a flood loop between hosts). A miss on vngd<ID>'s ingress is
redirected to the TAP's egress (`Local.punt_ifindex`), whose encap punts it to the forwarder.
"""

from __future__ import annotations

import subprocess

from gatekeeper.vnet.bpf.gro import GroChoice, apply_veth


class GroLinkError(RuntimeError):
    pass


def names(vnet: int) -> tuple[str, str]:
    """(the decap side, the bridge side) of VNET `vnet`'s GRO veth pair."""
    return f"vngd{vnet}", f"vngb{vnet}"


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise GroLinkError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")


def create(vnet: int, bridge: str, tap: str, mtu: int, choice: GroChoice) -> str:
    """Make the pair, plug its bridge side into `bridge` and set it for `choice`; returns the decap
    side's name. Anything left from an earlier gatekeeper is replaced."""
    decap, port = names(vnet)
    delete(vnet)
    _run("ip", "link", "add", decap, "mtu", str(mtu), "type", "veth", "peer", "name", port, "mtu", str(mtu))
    try:
        _run("ip", "link", "set", port, "master", bridge, "up")
        _run("bridge", "link", "set", "dev", port, "flood", "off", "mcast_flood", "off", "bcast_flood", "off",
             "isolated", "on")
        _run("bridge", "link", "set", "dev", tap, "isolated", "on")
        apply_veth(choice, decap, port)
        _run("ip", "link", "set", decap, "up")
    except Exception:
        delete(vnet)
        raise
    return decap


def delete(vnet: int) -> None:
    """Remove the pair (both ends go with one); nothing to do when it does not exist."""
    subprocess.run(["ip", "link", "del", names(vnet)[0]], capture_output=True, timeout=10, check=False)
