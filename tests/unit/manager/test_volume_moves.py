"""Volume moves on the manager: the record, what it means for placements and the hosts' desired
states (destination volume, the VM host's disk `move`), and no flip-flop while both hosts hold it."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.manager import volume_moves
from softudc.manager.desired import DesiredInputs
from softudc.manager.errors import ApiError
from softudc.manager.store import Store
from softudc.manager.volume_moves import Move, placements
from softudc.manager.volumes import VolumeView
from softudc.model.farm import Farm, VmDef
from softudc.model.hoststate import DesiredState, parse
from softudc.model.volume import VolumeDef
from tests.unit.manager.test_loop import FakeStore

GiB, MiB = 1 << 30, 1 << 20
VID = "shop--db-0--data"
MOVE = Move("m1", VID, "h2", "h3", limit_mbps=8)


def farms() -> list[tuple[Any, dict[str, Any]]]:
    vm = VmDef("db", 1, 1, 256, "img", (), volumes=(VolumeDef("data", 64 * MiB, "remote", "gold"),))
    return [(Farm("shop", (), (vm,)), {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]})]


def reports(h3: dict[str, Any] | None = None, h1_moves: dict[str, Any] | None = None,
            h2_holds: bool = True) -> dict[str, dict[str, Any]]:
    pool: dict[str, Any] = {"capacity_bytes": 10 * GiB, "free_bytes": 10 * GiB}
    out: dict[str, dict[str, Any]] = {
        "h1": {"contract": 3, "running": ["shop--db-0"], "pool": pool, "volumes": {},
               **({"disk_moves": h1_moves} if h1_moves else {})},
        "h2": {"contract": 3, "pool": pool, "volumes": {"gold": {}, **({VID: {"address": "10.1.0.2", "port": 10810,
                                                               "allowed": ["h1"]}} if h2_holds else {})}},
        "h3": {"contract": 3, "pool": {**pool, "free_bytes": 20 * GiB}, "volumes": h3 or {}}}
    return out


EXPORT3 = {VID: {"address": "10.1.0.3", "port": 10809, "allowed": ["h1"]}}


def desired(host: str, r: dict[str, dict[str, Any]], moves: dict[str, Move]) -> DesiredState:
    data = DesiredInputs(farms(), r, lambda f, v: {"send_epoch": 0, "secrets": {}}, moves=moves).json(host)
    return parse(DesiredState, data)


def test_while_copying_the_destination_holds_an_empty_flat_volume_exported_to_the_vm_s_host() -> None:
    r = reports()
    h3 = desired("h3", r, {VID: MOVE})
    assert [(v.name, v.size_bytes, v.backing, v.allowed) for v in h3.volumes] == [(VID, 64 * MiB, None, ["h1"])]
    h2 = desired("h2", r, {VID: MOVE})
    assert [(v.name, v.backing) for v in h2.volumes] == [(VID, "gold")]  # the source keeps it meanwhile
    disk = desired("h1", r, {VID: MOVE}).vms[0].disks[0]
    assert (disk.host, disk.address, disk.move) == ("h2", "10.1.0.2", None)  # no destination export yet


def test_the_vm_s_host_is_told_to_copy_once_the_destination_exports_to_it() -> None:
    disk = desired("h1", reports(h3=EXPORT3), {VID: MOVE}).vms[0].disks[0]
    assert disk.host == "h2" and disk.move is not None
    assert (disk.move.id, disk.move.host, disk.move.address, disk.move.port, disk.move.limit_mbps,
            disk.move.adaptive) == ("m1", "h3", "10.1.0.3", 10809, 8, False)
    adaptive = Move("m2", VID, "h2", "h3", adaptive=True, max_latency_inflation_pct=20)
    d2 = desired("h1", reports(h3=EXPORT3), {VID: adaptive}).vms[0].disks[0].move
    assert d2 is not None and (d2.adaptive, d2.max_latency_inflation_pct, d2.limit_mbps) == (True, 20, None)
    other = {VID: {**EXPORT3[VID], "allowed": ["h9"]}}
    assert desired("h1", reports(h3=other), {VID: MOVE}).vms[0].disks[0].move is None


def test_once_pivoted_the_volume_is_on_the_destination_and_the_source_no_longer_wants_it() -> None:
    r = reports(h3=EXPORT3, h1_moves={VID: {"id": "m1", "vm": "shop--db-0", "to": "h3", "state": "pivoted"}})
    disk = desired("h1", r, {VID: MOVE}).vms[0].disks[0]
    assert (disk.host, disk.address, disk.port) == ("h3", "10.1.0.3", 10809)
    assert desired("h2", r, {VID: MOVE}).volumes == []  # removed after the gatekeeper's grace period
    h3 = desired("h3", r, {VID: MOVE}).volumes
    assert [(v.name, v.backing) for v in h3] == [(VID, None)]  # the copy is flat: no master on h3


def test_no_flip_flop_while_both_hosts_report_the_volume() -> None:
    """h2 < h3 in name order: without the record, the first reporting host would win either way."""
    copying = reports(h3=EXPORT3)
    assert VolumeView(farms(), copying, moves={VID: MOVE}).plan.volumes[VID].host == "h2"
    back = Move("m1", VID, "h3", "h2")  # the other way round, h2 as the destination
    assert VolumeView(farms(), copying, moves={VID: back}).plan.volumes[VID].host == "h3"
    done = Move("m1", VID, "h2", "h3", done=True)  # recorded done: the report of the pivot may be gone
    assert VolumeView(farms(), copying, moves={VID: done}).plan.volumes[VID].host == "h3"


@given(st.dictionaries(st.sampled_from(["a--b--c", "a--b--d", "x--y--z"]),
                       st.tuples(st.sampled_from(["h1", "h2"]), st.sampled_from(["h3", "h4"]), st.booleans()),
                       max_size=3),
       st.sampled_from(["copying", "ready", "pivoted", "failed"]))
def test_a_recorded_move_places_its_volume_on_exactly_its_source_or_destination(
        recs: dict[str, tuple[str, str, bool]], reported: str) -> None:
    moves = {vid: Move("m1", vid, src, to, done=done) for vid, (src, to, done) in recs.items()}
    rep = {"h9": {"disk_moves": {vid: {"id": "m1", "vm": "v", "to": "x", "state": reported} for vid in recs}}}
    got = placements(moves, rep)
    for vid, m in moves.items():
        assert got[vid] == (m.to if m.done or reported == "pivoted" else m.source)


ROW = {"id": VID, "farm": "shop", "instance": "db-0", "class": "remote", "state": "held", "host": "h2",
       "vm_host": "h1", "size_bytes": 64 * MiB, "export": {"port": 10810}}


@pytest.mark.parametrize(("row", "to", "limit", "adaptive", "running", "why"), [
    ({**ROW, "class": "local"}, "h3", None, False, True, "only remote volumes move"),
    ({**ROW, "state": "planned", "export": None}, "h3", None, False, True, "not held and exported yet"),
    (ROW, "h2", None, False, True, "already on h2"),
    (ROW, "h7", None, False, True, "h7 runs no storage service"),
    ({**ROW, "size_bytes": 30 * GiB}, "h3", None, False, True, "h3's pool has 21474836480 bytes free"),
    (ROW, "h3", 5, True, True, "either a limit"),
    (ROW, "h3", 0, False, True, "limit_mbps 0"),
    (ROW, "h3", 5, False, False, "not running on h1"),
    ({**ROW, "encrypted": True}, "h3", None, False, True, "is encrypted"),
])
def test_a_move_that_cannot_be_done_is_refused_saying_why(row: dict[str, Any], to: str, limit: int | None,
                                                           adaptive: bool, running: bool, why: str) -> None:
    store = cast(Store, FakeStore())
    with pytest.raises(ApiError, match=why):
        volume_moves.request(store, row, to, limit, adaptive, 50, {"h2": GiB, "h3": 20 * GiB}, {}, running)
    assert store.objects(volume_moves.KIND) == []  # nothing recorded


def test_request_records_one_move_at_a_time_then_finish_marks_it_done_and_prunes_it() -> None:
    store = cast(Store, FakeStore())
    free = {"h2": GiB, "h3": 20 * GiB}
    move = volume_moves.request(store, ROW, "h3", 8, False, 50, free, {}, True, now=1000.0)
    assert (move.id, move.source, move.to, move.limit_mbps) == ("mf4240", "h2", "h3", 8)
    assert volume_moves.records(store) == {VID: move}
    with pytest.raises(ApiError, match="being moved to h3 already"):
        volume_moves.request(store, ROW, "h3", 8, False, 50, free, {}, True)
    r = reports(h3=EXPORT3, h1_moves={VID: {"id": move.id, "vm": "shop--db-0", "to": "h3", "state": "copying",
                                            "cur_bytes": 5, "end_bytes": 10, "rate_bps": 8e6}})
    st_ = volume_moves.status(move, r)
    assert (st_["state"], st_["cur_bytes"], st_["end_bytes"], st_["rate_bps"]) == ("copying", 5, 10, 8e6)
    r["h1"]["disk_moves"][VID]["state"] = "pivoted"
    volume_moves.finish(store, volume_moves.records(store), r)
    done = volume_moves.records(store)[VID]
    assert done.done and volume_moves.status(done, {})["state"] == "done"
    volume_moves.finish(store, volume_moves.records(store), r)  # h2 still holds it: kept
    assert VID in volume_moves.records(store)
    volume_moves.finish(store, volume_moves.records(store), reports(h3=EXPORT3, h2_holds=False))
    assert volume_moves.records(store) == {}  # the source dropped it: nothing left to guard against


def test_a_move_after_a_done_one_starts_afresh() -> None:
    store = cast(Store, FakeStore())
    free = {"h2": GiB, "h3": 20 * GiB}
    first = volume_moves.request(store, ROW, "h3", 8, False, 50, free, {}, True, now=1.0)
    store.set_status(volume_moves.KIND, VID, {"state": "done"})
    back = volume_moves.request(store, {**ROW, "host": "h3"}, "h2", 8, False, 50, free, {}, True, now=2.0)
    got = volume_moves.records(store)[VID]
    assert got == back and not got.done and got.id != first.id and got.to == "h2"


def test_a_failed_move_may_be_asked_for_again() -> None:
    store = cast(Store, FakeStore())
    free = {"h2": GiB, "h3": 20 * GiB}
    first = volume_moves.request(store, ROW, "h3", 8, False, 50, free, {}, True, now=1.0)
    failed = {"h1": {"disk_moves": {VID: {"id": first.id, "vm": "v", "to": "h3", "state": "failed"}}}}
    again = volume_moves.request(store, ROW, "h3", None, True, 30, free, failed, True, now=2.0)
    assert again.id != first.id and again.adaptive


def test_a_live_migration_waits_for_a_move_in_flight() -> None:
    vm = farms()[0][0].vms[0]
    copying = reports(h3=EXPORT3)
    assert VolumeView(farms(), copying).admit("shop", "db-0", vm, "h1")  # h1 is on the export's list
    assert not VolumeView(farms(), copying, moves={VID: MOVE}).admit("shop", "db-0", vm, "h1")
    done = Move("m1", VID, "h2", "h3", done=True)
    assert VolumeView(farms(), copying, moves={VID: done}).admit("shop", "db-0", vm, "h1")
    failed = reports(h3=EXPORT3, h1_moves={VID: {"id": "m1", "vm": "shop--db-0", "to": "h3", "state": "failed"}})
    assert VolumeView(farms(), failed, moves={VID: MOVE}).admit("shop", "db-0", vm, "h1")  # no job left
