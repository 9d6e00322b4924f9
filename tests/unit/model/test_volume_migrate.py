"""A local volume's `migrate` policy in the descriptor (issue 13 item 5)."""

from __future__ import annotations

from softudc.model.farm import validate
from tests.unit.model.test_volume import farm, problems


def test_migrate_defaults_to_refuse_and_copy_is_kept() -> None:
    f = validate(farm("{name: a, size: 1Gi}", "{name: b, size: 1Gi, migrate: copy}"), "f.yaml")
    assert [v.migrate for v in f.vms[0].volumes] == ["refuse", "copy"]


def test_migrate_is_for_local_volumes_and_one_of_its_words() -> None:
    assert any("volumes[0].migrate: migrate applies to local volumes; a remote volume" in p
               for p in problems("{name: a, size: 1Gi, class: remote, migrate: copy}"))
    assert any("volumes[0].migrate" in p and "copy" in p for p in problems("{name: a, size: 1Gi, migrate: move}"))
