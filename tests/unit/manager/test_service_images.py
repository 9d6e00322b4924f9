"""The manager exports the metrics of the image store in its state directory (`softudc image`'s
default store), and none while there is no store there."""

from __future__ import annotations

from pathlib import Path

from softudc.images.store import ImageStore
from softudc.manager.service import Manager, init


def _families(m: Manager) -> set[str]:
    return {f.name for f in m.registry.collect()}


def test_the_image_store_of_the_state_directory_is_measured(tmp_path: Path) -> None:
    init(tmp_path, ["127.0.0.1"])
    m = Manager(tmp_path)
    try:
        assert "softudc_image_objects" not in _families(m)
        assert not (tmp_path / "images").exists()  # measuring made nothing
    finally:
        m.close()
    ImageStore.open(tmp_path / "images").close()
    m = Manager(tmp_path)
    try:
        assert {"softudc_image_objects", "softudc_image_store_bytes"} <= _families(m)
    finally:
        m.close()
