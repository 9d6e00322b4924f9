"""A VM with local volumes migrates only as its volumes' `migrate` policy says."""

from __future__ import annotations

import pytest

from softudc.manager.auth import Principal
from softudc.manager.errors import ApiError
from softudc.manager.service import Manager
from softudc.manager.volume_migration import copied, refusal
from softudc.model.farm import VmDef
from softudc.model.volume import VolumeDef
from tests.unit.manager.test_loop import FakeStore

MiB = 1 << 20


def vm(*volumes: VolumeDef) -> VmDef:
    return VmDef("db", 1, 1, 256, "img", (), volumes=volumes)


def test_a_local_volume_refuses_a_live_migration_naming_it_and_what_to_do() -> None:
    why = refusal("db-0", vm(VolumeDef("data", 64 * MiB)), "h1", live=True)
    assert why is not None
    assert "db-0: its volume data is local (a file on h1)" in why and "`migrate: copy`" in why
    assert "`class: remote`" in why


def test_migrate_copy_admits_a_live_migration_but_never_a_cold_move() -> None:
    v = vm(VolumeDef("data", 64 * MiB, migrate="copy"))
    assert refusal("db-0", v, "h1", live=True) is None
    cold = refusal("db-0", v, "h1", live=False)
    assert cold is not None and "a cold move" in cold and "policy: live" in cold
    assert copied(v) == ["data"]


@pytest.mark.parametrize("cls", ["remote", "mirrored"])
def test_network_volumes_never_stand_in_the_way(cls: str) -> None:
    v = vm(VolumeDef("data", 64 * MiB, cls))
    assert refusal("db-0", v, "h1", live=True) is None and refusal("db-0", v, "h1", live=False) is None
    assert copied(v) == []


def test_the_first_refusing_volume_is_named() -> None:
    v = vm(VolumeDef("a", MiB, "remote"), VolumeDef("b", MiB, migrate="copy"), VolumeDef("c", MiB))
    why = refusal("db-0", v, "h1", live=True)
    assert why is not None and "its volume c is local" in why


FARM = """apiVersion: softudc.io/v1alpha1
kind: Farm
metadata: {name: shop}
spec:
  vnets: [{name: front, subnet: 10.0.0.0/24}]
  vms:
    - name: db
      memory: 256Mi
      image: test-guest
      migration: {policy: live}
      nics: [{vnet: front}]
      volumes: [{name: data, size: 1Gi}]
"""


def test_the_migration_workflow_refuses_it_before_anything_moves(world: tuple[Manager, FakeStore]) -> None:
    m, store = world
    store.put("farm", "shop", {"descriptor": FARM, "owner": "admin"})
    status = {"instances": [{"name": "db-0", "vm": "db", "host": "h1"}]}
    store.set_status("farm", "shop", status)
    with pytest.raises(ApiError, match="db-0: its volume data is local") as e:
        m.migrate(Principal("admin", "admin"), "shop", "db-0", {"to": "h2"})
    assert e.value.status == 409
    obj = store.get("farm", "shop")
    assert obj is not None and obj.status == status  # nothing recorded
