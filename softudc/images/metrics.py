"""The image store's Prometheus metrics (issue 15), for the daemon that holds the store (the
manager: its state directory's images/, where `softudc image` commands on it keep theirs).

    softudc_image_store_bytes{kind}   stored: what every object takes on disk (zstd, manifests
                                      included); logical: the file bytes of every tagged version
                                      added up (what the store would take without sharing)
    softudc_image_objects             objects in the content store
    softudc_image_versions            versions ever committed (history outlives a GC)
    softudc_image_tags                tags (NAME:N and NAME:latest)

A scrape walks the objects' directory (a stat per object), so the figures are kept for CACHE_S: a
store of 100k objects costs one walk a minute, not one per scrape. No store at the directory (no
refs.db): no series. Fetches by source (hosts fetching content from peers) come with the peer
delivery, which this version does not have (docs/monitoring.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from softudc.images.store import ImageError, ImageStore

CACHE_S = 60.0


def figures(root: Path) -> dict[str, float] | None:
    """The store's figures now, None when `root` holds no store (nothing is created there)."""
    if not (root / "refs.db").is_file():
        return None
    try:
        with ImageStore.open(root) as store:
            usage = store.usage()
            return {"stored_bytes": usage["stored_bytes"], "logical_bytes": usage["logical_bytes"],
                    "objects": usage["objects"], "versions": len(store.versions()), "tags": len(store.tags())}
    except ImageError:
        return None


class ImageStoreCollector(Collector):
    def __init__(self, root: Path, cache_s: float = CACHE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.root, self.cache_s, self.clock = root, cache_s, clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._figures: dict[str, float] | None = None

    def _current(self) -> dict[str, float] | None:
        with self._lock:
            now = self.clock()
            if self._at is None or now - self._at >= self.cache_s:
                self._figures, self._at = figures(self.root), now
            return self._figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        f = self._current()
        if f is None:
            return
        size = GaugeMetricFamily("softudc_image_store_bytes", "The image store's size: stored (on disk, "
                                 "compressed and shared) and logical (every tagged version's files added up)",
                                 labels=["kind"])
        size.add_metric(["stored"], f["stored_bytes"])
        size.add_metric(["logical"], f["logical_bytes"])
        yield size
        for name, key, doc in (("softudc_image_objects", "objects", "Objects in the image content store"),
                               ("softudc_image_versions", "versions", "Image versions ever committed"),
                               ("softudc_image_tags", "tags", "Image tags (NAME:N and NAME:latest)")):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], f[key])
            yield g
