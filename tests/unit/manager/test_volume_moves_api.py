"""POST/GET /v1/volumes/{id}/move through the manager's service calls: a move recorded, shown with
the VM host's progress, done once pivoted; refused while the VM migrates or for a reader."""

from __future__ import annotations

from typing import Any

import pytest

from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.volume_moves_api import MoveRequest, all_moves, move_of, move_volume
from softudc.manager.volumes_api import volume
from tests.unit.manager.test_loop import FakeStore

GiB = 1 << 30
VID = "shop--db-0--data"
FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: shop}
spec:
  vnets: [{name: front, subnet: 10.0.0.0/24}]
  vms:
    - name: db
      memory: 256Mi
      image: test-guest
      nics: [{vnet: front}]
      volumes: [{name: data, size: 1Gi, class: remote}]
"""
ADMIN = Principal("admin", "admin")
POOL = {"capacity_bytes": 10 * GiB, "free_bytes": 10 * GiB}


def report(m: Manager, host: str, **fields: Any) -> None:
    m.host_status(host, host, {"vcpus": 8, "memory_mib": 8192, "contract": 3, "pool": POOL, **fields})


def setup(m: Manager, store: FakeStore, migrating: bool = False) -> None:
    for h in ("h2", "h3"):
        store.put("host", h, {"joined": 1.0, "certificate": h})
    report(m, "h1", running=["shop--db-0"], volumes={})
    report(m, "h2", volumes={VID: {"address": "10.1.0.2", "port": 10810, "allowed": ["h1"]}})
    report(m, "h3", volumes={})
    store.put("farm", "shop", {"descriptor": FARM, "owner": "admin"})
    inst: dict[str, Any] = {"name": "db-0", "vm": "db", "host": "h1"}
    if migrating:
        inst["migrating"] = {"to": "h3"}
    store.set_status("farm", "shop", {"instances": [inst]})


def test_a_move_is_recorded_followed_and_done_once_pivoted(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    setup(m, store)
    assert volume(m, ADMIN, VID)["host"] == "h2"
    got = move_volume(m, ADMIN, VID, MoveRequest(to="h3", limit_mbps=8))
    assert (got["from"], got["to"], got["state"], got["limit_mbps"]) == ("h2", "h3", "requested", 8)
    with pytest.raises(ApiError, match="being moved to h3 already"):
        move_volume(m, ADMIN, VID, MoveRequest(to="h3"))
    mid = got["id"]
    report(m, "h3", volumes={VID: {"address": "10.1.0.3", "port": 10809, "allowed": ["h1"]}})
    report(m, "h1", running=["shop--db-0"], volumes={},
           disk_moves={VID: {"id": mid, "vm": "shop--db-0", "to": "h3", "state": "copying", "cur_bytes": 5,
                             "end_bytes": 10}})
    assert (move_of(m, ADMIN, VID)["state"], volume(m, ADMIN, VID)["move"]["cur_bytes"]) == ("copying", 5)
    assert volume(m, ADMIN, VID)["host"] == "h2"  # both hosts hold it: the record says where
    report(m, "h1", running=["shop--db-0"], volumes={},
           disk_moves={VID: {"id": mid, "vm": "shop--db-0", "to": "h3", "state": "pivoted"}})
    assert move_of(m, ADMIN, VID)["state"] == "done"
    row = volume(m, ADMIN, VID)
    assert (row["host"], row["state"], row["export"]["port"]) == ("h3", "held", 10809)
    assert [x["id"] for x in all_moves(m, ADMIN)] == [mid]
    assert all_moves(m, Principal("v", "viewer", ("other",))) == []


def test_a_move_is_refused_while_the_vm_migrates_and_for_a_reader(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    setup(m, store, migrating=True)
    with pytest.raises(ApiError, match="is migrating to h3"):
        move_volume(m, ADMIN, VID, MoveRequest(to="h3"))
    with pytest.raises(ApiError, match="may not"):
        move_volume(m, Principal("v", "viewer", ("shop",)), VID, MoveRequest(to="h3"))
    with pytest.raises(ApiError, match="has no move recorded"):
        move_of(m, ADMIN, VID)
