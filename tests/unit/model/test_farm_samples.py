"""Every sample farm in configs/farms/ is valid and places on a small cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.manager.planner import plan_farm
from softudc.model.farm import validate
from softudc.placement import Host

SAMPLES = sorted((Path(__file__).parents[3] / "configs" / "farms").glob("*.yaml"))


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_farms_validate_and_place(path: Path) -> None:
    farm = validate(path.read_text(), str(path))
    assert farm.name == path.stem
    plan = plan_farm(farm, [Host(f"h{i}", 8, 16384) for i in (1, 2, 3)], [])
    assert not plan.unplaced and len(plan.create) == sum(v.replicas for v in farm.vms)


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 2
