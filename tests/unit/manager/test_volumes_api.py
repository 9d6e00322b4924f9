"""GET /v1/volumes's view: the stored farms' volumes planned on the hosts whose reports carry a pool."""

from __future__ import annotations

import pytest

from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.volumes import pool_free
from softudc.manager.volumes_api import volumes
from tests.unit.manager.test_loop import FakeStore

GiB = 1 << 30
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
      volumes:
        - {name: data, size: 2Gi, class: remote, keep: true, encrypted: true, mbps: 20}
        - {name: big, size: 64Ti}
"""


def test_the_farm_s_volumes_are_listed_planned_or_unplaced(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    m.host_status("h1", "h1", {"vcpus": 8, "memory_mib": 8192, "running": [],
                               "pool": {"capacity_bytes": 10 * GiB, "free_bytes": 10 * GiB}})
    store.put("farm", "shop", {"descriptor": FARM, "owner": "admin"})
    store.set_status("farm", "shop", {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]})
    assert pool_free(m.reports()) == {"h1": 10 * GiB}
    rows = volumes(m, Principal("admin", "admin"))
    assert [(r["id"], r["state"], r["host"]) for r in rows] == [("shop--db-0--big", "unplaced", None),
                                                                  ("shop--db-0--data", "planned", "h1")]
    data = rows[1]
    assert (data["class"], data["size_bytes"], data["keep"], data["allowed"]) == ("remote", 2 * GiB, True, ["h1"])
    assert (data["encrypted"], data["iops"], data["mbps"]) == (True, None, 20) and "key" not in data
    assert "h1's pool has 8589934592 bytes free, the volume needs 70368744177664" in rows[0]["reason"]
    assert volumes(m, Principal("v", "viewer", ("other",))) == []
    with pytest.raises(ApiError, match="may not read farm 'shop'"):
        volumes(m, Principal("v", "viewer", ("other",)), "shop")


def test_reports_without_a_pool_give_no_room() -> None:
    assert pool_free({"h1": {}, "h2": {"pool": None}, "h3": {"pool": {"free_bytes": True}},
                      "h4": {"pool": {"free_bytes": 5}}}) == {"h4": 5}


def test_one_volume_is_described_with_its_export_and_a_delete_says_what_to_do(
        world: tuple[Manager, FakeStore]) -> None:
    from softudc.manager.volumes_api import delete_volume, volume

    m, store = world
    export = {"address": "10.0.0.1", "port": 10810, "allowed": ["h1"]}
    m.host_status("h1", "h1", {"vcpus": 8, "memory_mib": 8192, "running": [], "contract": 3,
                               "pool": {"capacity_bytes": 10 * GiB, "free_bytes": 10 * GiB},
                               "volumes": {"shop--db-0--data": export}})
    store.put("farm", "shop", {"descriptor": FARM, "owner": "admin"})
    store.set_status("farm", "shop", {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]})
    admin = Principal("admin", "admin")
    row = volume(m, admin, "shop--db-0--data")
    assert (row["state"], row["host"], row["export"]) == ("held", "h1", export)
    assert volume(m, admin, "shop--db-0--big")["export"] is None
    with pytest.raises(ApiError, match="not a farm volume's id"):
        volume(m, admin, "nope")
    with pytest.raises(ApiError, match="`softudc volume list --farm shop` names its volumes"):
        volume(m, admin, "shop--db-9--data")
    with pytest.raises(ApiError, match="may not read farm 'shop'"):
        volume(m, Principal("v", "viewer", ("other",)), "shop--db-0--data")
    with pytest.raises(ApiError, match="remove it from the farm's descriptor") as e:
        delete_volume(m, admin, "shop--db-0--data")
    assert e.value.status == 409
