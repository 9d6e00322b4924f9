"""A VM with local volumes migrates only as its volumes' `migrate` policy says."""

from __future__ import annotations

import pytest

from softudc.manager.volume_migration import copied, refusal
from softudc.model.farm import VmDef
from softudc.model.volume import VolumeDef

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
