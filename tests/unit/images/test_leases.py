from __future__ import annotations

import os
from pathlib import Path

import pytest

from softudc.images.leases import Lease, oldest_live


def test_live_leases_and_dead_ones(tmp_path: Path) -> None:
    assert oldest_live(tmp_path / "none") is None
    first, second = Lease(tmp_path), Lease(tmp_path)
    assert oldest_live(tmp_path) == pytest.approx(first.began, abs=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, second.path.name])
    first.release()
    first.release()  # twice is fine
    assert not first.path.exists()
    assert oldest_live(tmp_path) == pytest.approx(second.began, abs=0.5)
    assert second._fd is not None
    os.close(second._fd)  # as if its process had died: the flock goes with it
    second._fd = None
    assert oldest_live(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
