"""A farm's topology as a picture: its VMs inside the hosts that run them, wired to its VNETs.
Pure layout (coordinates for softudc/console/templates/_topology.html, an SVG the server renders):
one column per host, its VMs stacked in it; each VNET a bus along the bottom, reached from every
VM with a NIC on it by a short wire to a lane of that VNET at the column's right edge. A VM on
its way to another host is drawn dashed with an arrow to its destination's column.

    host column:  ┌ h1 ──────────┐
                  │ [web-0]──●   │   lanes (one per VNET, x fixed per VNET)
                  │ [db-0]───┼─● │
                  └──────────┼─┼─┘
    VNET buses:   ───────────●─┼──── front
                  ─────────────●──── back
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PALETTE = ("#2456a6", "#1a7f37", "#9a6700", "#8250df", "#b42318", "#0f7b8a", "#bc4c00", "#57606a")
COL_W, COL_GAP, PAD = 200, 24, 12  # px
HEAD_H, VM_H, VM_GAP = 26, 26, 8
LANE_GAP, BUS_GAP, LABEL_W = 9, 24, 90
VM_TEXT_MAX = 20  # characters of a VM's label


@dataclass(frozen=True)
class VmBox:
    name: str
    host: str
    x: float
    y: float
    w: float
    state: str
    moving_to: str | None = None
    h: float = VM_H

    @property
    def label(self) -> str:
        return self.name if len(self.name) <= VM_TEXT_MAX else self.name[:VM_TEXT_MAX - 1] + "…"


@dataclass(frozen=True)
class Wire:
    points: str  # an SVG polyline's points
    colour: str
    vnet: str


@dataclass(frozen=True)
class Bus:
    name: str
    y: float
    x1: float
    x2: float
    colour: str


@dataclass(frozen=True)
class HostBox:
    name: str
    x: float
    y: float
    w: float
    h: float


@dataclass
class Topology:
    width: float
    height: float
    hosts: list[HostBox] = field(default_factory=list)
    vms: list[VmBox] = field(default_factory=list)
    buses: list[Bus] = field(default_factory=list)
    wires: list[Wire] = field(default_factory=list)
    moves: list[Wire] = field(default_factory=list)  # a moving VM to its destination's column

    @property
    def empty(self) -> bool:
        return not self.vms


def layout(instances: Iterable[Mapping[str, Any]], vnets: list[str], nics: Mapping[str, list[str]]) -> Topology:
    """The picture of `instances` ({name, vm, host, state?, migrating?: {to}}) on `vnets` (the
    farm's, in order), where `nics[vm]` names the VNETs a VM definition has NICs on."""
    insts = sorted(instances, key=lambda i: (str(i.get("host", "")), str(i["name"])))
    hosts = sorted({str(i.get("host", "")) for i in insts} | {str(i["migrating"]["to"]) for i in insts
                                                               if isinstance(i.get("migrating"), Mapping)
                                                               and i["migrating"].get("to")})
    colour = {v: PALETTE[k % len(PALETTE)] for k, v in enumerate(vnets)}
    per_host = {h: [i for i in insts if str(i.get("host", "")) == h] for h in hosts}
    tallest = max((len(v) for v in per_host.values()), default=0)
    col_h = HEAD_H + tallest * (VM_H + VM_GAP) + VM_GAP
    bus0 = PAD + col_h + BUS_GAP
    width = LABEL_W + PAD + len(hosts) * (COL_W + COL_GAP)
    topo = Topology(width, bus0 + max(len(vnets) - 1, 0) * BUS_GAP + PAD + 6)
    x_of = {}
    for c, h in enumerate(hosts):
        x = LABEL_W + PAD + c * (COL_W + COL_GAP)
        x_of[h] = x
        topo.hosts.append(HostBox(h, x, PAD, COL_W, col_h))
        _column(topo, per_host[h], x, vnets, nics, colour, bus0)
    topo.buses = [Bus(v, bus0 + k * BUS_GAP, PAD, width - PAD, colour[v]) for k, v in enumerate(vnets)]
    for b in topo.vms:
        if b.moving_to in x_of:
            tx = x_of[b.moving_to] + COL_W / 2
            topo.moves.append(Wire(f"{b.x + b.w / 2:.0f},{b.y:.0f} {(b.x + tx) / 2:.0f},{PAD / 2:.0f} "
                                   f"{tx:.0f},{PAD + HEAD_H - 6:.0f}", "#57606a", ""))
    return topo


def _column(topo: Topology, insts: list[Mapping[str, Any]], x: float, vnets: list[str],
            nics: Mapping[str, list[str]], colour: Mapping[str, str], bus0: float) -> None:
    """One host's VMs and their wires down to the buses."""
    lanes = {v: x + COL_W - PAD - k * LANE_GAP for k, v in enumerate(vnets)}
    vm_w = COL_W - 2 * PAD - len(vnets) * LANE_GAP - 6
    for n, inst in enumerate(insts):
        y = PAD + HEAD_H + VM_GAP + n * (VM_H + VM_GAP)
        moving = inst.get("migrating")
        to = str(moving.get("to")) if isinstance(moving, Mapping) and moving.get("to") else None
        box = VmBox(str(inst["name"]), str(inst.get("host", "")), x + PAD, y, vm_w,
                    str(inst.get("state") or "placed"), to)
        topo.vms.append(box)
        for v in nics.get(str(inst.get("vm", "")), []):
            if v in lanes:
                lane, bus = lanes[v], bus0 + vnets.index(v) * BUS_GAP
                topo.wires.append(Wire(f"{box.x + box.w:.0f},{y + VM_H / 2:.0f} {lane:.0f},{y + VM_H / 2:.0f} "
                                       f"{lane:.0f},{bus:.0f}", colour[v], v))
