"""GRO after decapsulation, chosen per underlay (issue 16 item 5; ../shared/reference/ebpf-datapath.md).

What decides wire-like throughput on the eBPF path is whether the decapsulated segments are merged
again before the bridge (VXLAN has its gro_cells; we use NAPI GRO of a veth pair: the bridge side
`gro on`, its sending peer `tso off`, since veth only takes its GRO path from a peer without TSO).
Measured on the prototype: with an underlay that delivers wire-sized frames it lifts TCP from
0.60x to 1.01x VXLAN; on a default veth, whose GSO super-frames cross whole, the same setting makes
the kernel segment them at the uplink and merge them again: 0.87x falls to 0.47x. So:

* the underlay delivers super-frames (a virtual device passing UDP-tunnel GSO skbs: veth/tun/netkit
  with generic-segmentation-offload and tx-udp_tnl-segmentation on): GRO after decap **off**;
* it delivers wire-sized frames (a NIC: the wire carries MTU-sized packets; or a virtual device
  segmenting in software): GRO after decap **on**.

The underlay's features come from `ethtool -k` (the kernel's netlink ETHTOOL_MSG_FEATURES_GET
names, as ethtool prints them); the driver from `ethtool -i`. A host's underlays are taken to be
alike (the sender's device decides whether super-frames arrive; ours stands for it).
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

VIRTUAL_DRIVERS = frozenset({"veth", "tun", "netkit"})
PASSES_SUPERFRAMES = ("generic-segmentation-offload", "tx-udp_tnl-segmentation")
# Merging several tunnel datagrams into one UDP GSO skb before tc ingress: decap would strip only
# the first header (the programs cannot see gso_type). Reported, never turned on by us.
HARMFUL_RX = ("rx-udp-gro-forwarding", "rx-gro-list")
_LINE = re.compile(r"^\s*([A-Za-z0-9_][A-Za-z0-9_-]*): (on|off)( \[(?:fixed|requested \w+)\])?\s*$")


class GroError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class GroChoice:
    device: str
    driver: str
    on: bool
    reason: str
    warning: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"device": self.device, "driver": self.driver, "gro_after_decap": self.on, "reason": self.reason,
                "warning": self.warning}


def parse_features(text: str) -> dict[str, bool]:
    """`ethtool -k DEV` output -> {feature: on}. The header line and anything that is not a
    `name: on|off [fixed]` line are ignored; a feature listed twice keeps its last value."""
    out: dict[str, bool] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m[1]] = m[2] == "on"
    return out


def parse_driver(text: str) -> str:
    """`ethtool -i DEV` output -> the driver name ("" when the device reports none)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "driver":
            return value.strip()
    return ""


def choose(device: str, driver: str, features: dict[str, bool]) -> GroChoice:
    """Whether to merge decapsulated segments again (GRO after decap) on this underlay."""
    harmful = [f for f in HARMFUL_RX if features.get(f)]
    warning = (f"{', '.join(harmful)} on {device}: several tunnel datagrams merged into one skb would lose all "
               f"but the first header at decapsulation; turn it off (ethtool -K {device} "
               + " ".join(f"{f} off" for f in harmful) + ")") if harmful else None
    if driver not in VIRTUAL_DRIVERS:
        what = f"a NIC (driver {driver})" if driver else "a device without a driver name (taken as a NIC)"
        return GroChoice(device, driver, True, f"{device} is {what}: frames arrive wire-sized, GRO after "
                         "decapsulation merges them (wire-like: 0.60x -> 1.01x VXLAN)", warning)
    off = [f for f in PASSES_SUPERFRAMES if not features.get(f, False)]
    if off:
        return GroChoice(device, driver, True, f"{device} ({driver}) segments in software ({', '.join(off)} off): "
                         "frames arrive wire-sized, GRO after decapsulation merges them", warning)
    return GroChoice(device, driver, False, f"{device} ({driver}) passes GSO super-frames whole: GRO after "
                     "decapsulation would segment and re-merge them (0.87x -> 0.47x VXLAN)", warning)


def _ethtool(*args: str) -> str:
    try:
        proc = subprocess.run(["ethtool", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GroError(f"ethtool {' '.join(args)}: {e} (install ethtool: scripts/bootstrap.sh)") from e
    if proc.returncode != 0:
        raise GroError(f"ethtool {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def choose_for(device: str) -> GroChoice:
    """Read `device`'s driver and offload features (in the current network namespace) and choose;
    logged, with the warning when the underlay merges UDP datagrams itself."""
    features = parse_features(_ethtool("-k", device))
    if not features:
        raise GroError(f"ethtool -k {device}: no features in its output; is {device} a network device here?")
    try:
        driver = parse_driver(_ethtool("-i", device))
    except GroError:
        driver = ""  # some virtual devices answer no driver info: taken as a NIC (GRO on is safe there)
    choice = choose(device, driver, features)
    log.info("GRO after decapsulation %s: %s", "on" if choice.on else "off", choice.reason)
    if choice.warning:
        log.warning("%s", choice.warning)
    return choice


def apply_veth(choice: GroChoice, uplink: str, bridge_side: str) -> None:
    """Set the veth pair (uplink: where decapsulated frames are sent; bridge_side: its peer, a
    bridge port) for the choice: on = the peer merges (`gro on`) what the uplink sends without
    TSO; off = the defaults back (uplink `tso on`, peer `gro off`)."""
    _ethtool("-K", uplink, "tso", "off" if choice.on else "on")
    _ethtool("-K", bridge_side, "gro", "on" if choice.on else "off")


def metrics_lines(choice: GroChoice | None) -> list[str]:
    """softudc_vnet_gro_after_decap{device,driver} 0|1 (nothing before a choice was made)."""
    if choice is None:
        return []
    return ["# HELP softudc_vnet_gro_after_decap GRO after decapsulation chosen for the underlay (1 on, 0 off).",
            "# TYPE softudc_vnet_gro_after_decap gauge",
            f'softudc_vnet_gro_after_decap{{device="{choice.device}",driver="{choice.driver}"}} {int(choice.on)}']
