"""The image store's metrics: sizes, objects, versions and tags as the store says; nothing for a
directory without a store (and nothing created there); figures kept for the cache time."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from softudc.images.metrics import ImageStoreCollector
from softudc.images.store import ImageStore
from tests.unit.images.test_store import tree


def values(collector: ImageStoreCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {s.name + "".join(f"{{{v}}}" for v in s.labels.values()): s.value
            for f in registry.collect() for s in f.samples}


def test_the_figures_are_the_stores(tmp_path: Path) -> None:
    with ImageStore.open(tmp_path / "img") as store:
        store.commit(tree(store, ("/a", b"x" * 5000), ("/b", b"y" * 300)), name="web", how="test")
        store.commit(tree(store, ("/a", b"x" * 5000)), name="web", how="test")
        usage, versions, tags = store.usage(), len(store.versions()), len(store.tags())
    got = values(ImageStoreCollector(tmp_path / "img"))
    assert got == {"softudc_image_store_bytes{stored}": usage["stored_bytes"],
                   "softudc_image_store_bytes{logical}": usage["logical_bytes"],
                   "softudc_image_objects": usage["objects"], "softudc_image_versions": versions,
                   "softudc_image_tags": tags}
    assert versions == 2 and tags == 3 and usage["objects"] >= 4  # web:1, web:2, web:latest; 2 files + 2 manifests


def test_no_store_no_series_and_nothing_created(tmp_path: Path) -> None:
    c = ImageStoreCollector(tmp_path / "none")
    assert values(c) == {}
    assert not (tmp_path / "none").exists()
    registry = CollectorRegistry()
    registry.register(c)
    assert generate_latest(registry) == b""


def test_figures_are_kept_for_the_cache_time(tmp_path: Path) -> None:
    now = [0.0]
    c = ImageStoreCollector(tmp_path / "img", cache_s=60.0, clock=lambda: now[0])
    with ImageStore.open(tmp_path / "img") as store:
        assert values(c)["softudc_image_versions"] == 0
        store.commit(tree(store, ("/a", b"z")), name="db", how="test")
        now[0] = 59.0
        assert values(c)["softudc_image_versions"] == 0
        now[0] = 60.0
        assert values(c)["softudc_image_versions"] == 1
