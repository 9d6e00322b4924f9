"""The topology picture's layout: every VM inside its host's column, wired to the buses of the
VNETs it has NICs on, a moving VM arrowed to its destination."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from softudc.console.topology import BUS_GAP, Topology, VmBox, layout


def _inside(topo: Topology, vm: VmBox) -> bool:
    col = next(h for h in topo.hosts if h.name == vm.host)
    return col.x <= vm.x and vm.x + vm.w <= col.x + col.w and col.y <= vm.y and vm.y + vm.h <= col.y + col.h


def test_demo_farm_layout() -> None:
    insts: list[dict[str, Any]] = [{"name": "web-0", "vm": "web", "host": "h1"},
                                   {"name": "web-1", "vm": "web", "host": "h2"},
                                   {"name": "db-0", "vm": "db", "host": "h1",
                                    "migrating": {"to": "h3", "state": "copying"}}]
    topo = layout(insts, ["front", "back"], {"web": ["front"], "db": ["back"]})
    assert [h.name for h in topo.hosts] == ["h1", "h2", "h3"]  # h3: a destination
    assert [b.name for b in topo.buses] == ["front", "back"] and topo.buses[1].y - topo.buses[0].y == BUS_GAP
    assert all(_inside(topo, v) for v in topo.vms)
    assert {w.vnet for w in topo.wires} == {"front", "back"} and len(topo.wires) == 3
    for w in topo.wires:  # each wire ends on its VNET's bus
        bus = next(b for b in topo.buses if b.name == w.vnet)
        assert float(w.points.split()[-1].split(",")[1]) == round(bus.y)
    db = next(v for v in topo.vms if v.name == "db-0")
    assert db.moving_to == "h3" and len(topo.moves) == 1
    h3 = next(h for h in topo.hosts if h.name == "h3")
    end_x = float(topo.moves[0].points.split()[-1].split(",")[0])
    assert h3.x <= end_x <= h3.x + h3.w


def test_nothing_placed_draws_nothing() -> None:
    assert layout([], ["front"], {}).empty


@given(st.lists(st.tuples(st.sampled_from(["h1", "h2", "h3", "h4"]), st.sampled_from(["web", "db"])),
                max_size=30))
def test_vms_never_overlap_and_stay_in_their_columns(placed: list[tuple[str, str]]) -> None:
    insts = [{"name": f"{vm}-{n}", "vm": vm, "host": h} for n, (h, vm) in enumerate(placed)]
    topo = layout(insts, ["a", "b", "c"], {"web": ["a", "b"], "db": ["c"]})
    assert len(topo.vms) == len(insts)
    assert all(_inside(topo, v) for v in topo.vms)
    for i, a in enumerate(topo.vms):
        for b in topo.vms[i + 1:]:
            assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
    assert topo.height > max((b.y for b in topo.buses), default=0)
