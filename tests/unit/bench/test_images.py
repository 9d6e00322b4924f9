"""The images benchmark's measuring steps on small synthetic stores (the debootstrap family and the
timings themselves are the benchmark's business, never asserted here)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from softudc.bench import images
from softudc.images.manifest import Entry
from softudc.images.store import ImageStore


def test_diff_bench_counts_what_it_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "DIFF_FILES", 1000)
    out = images.diff_bench(tmp_path)
    assert out["summary"]["files_removed"] == 50 and out["summary"]["files_added"] == 50
    assert out["summary"]["files_changed"] == 10 and out["seconds"] > 0


def test_search_bench_tags_a_fleet_and_queries_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "FLEET", 6)
    store = ImageStore.open(tmp_path)
    for name in ("a", "b"):
        tree = [Entry("/", "dir", 0o755), Entry("/etc", "dir", 0o755), Entry("/usr", "dir", 0o755),
                Entry("/usr/lib", "dir", 0o755)]
        for path, data in (("/etc/hostname", name.encode()), ("/usr/lib/libc.so.6", b"libc")):
            tree.append(store.content.entry_for_file(path, io.BytesIO(data), mode=0o644, uid=0, gid=0))
        store.commit(tree, name=name, how="test")
    out = images.search_bench(store, ["a", "b"])
    assert out["images"] == 6 and out["digest"]["hits"] == 6 and out["package"]["hits"] == 0
    assert store.resolve("fleet003").parents == (store.resolve("b").digest,)


def test_virt_inspector_missing_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    seconds, found, why = images.virt_inspector(tmp_path / "x.qcow2")
    assert seconds is None and found is None and "libguestfs-tools" in why


def test_print_images(capsys: pytest.CaptureFixture[str]) -> None:
    result = {
        "store": {"images": 5, "logical_bytes": 10**9, "stored_bytes": 2 * 10**8, "dedupe_ratio": 5.0,
                  "qcow2_bytes": 2 * 10**9, "qcow2_vs_store": 10.0, "tar_zst_bytes": 4 * 10**8,
                  "tar_zst_vs_store": 2.0},
        "inspect": {"ours_s": 0.02, "virt_inspector_s": None, "speedup": None, "virt_inspector_note": "not here"},
        "diff_10k": {"files": 10000, "seconds": 0.3},
        "search": {"images": 100,
                   **{k: {"query": "q", "seconds": 0.1, "hits": 1}
                      for k in ("package", "package_all", "file", "digest")}},
        "throughput_mbps": {"image_bytes": 6 * 10**8, "import": 50.0, "materialize": 80.0},
    }
    images.print_images(result)
    out = capsys.readouterr().out
    assert "dedupe+zstd 5.0x" in out and "virt-inspector: not here" in out and "materialize 80.0 MB/s" in out


def test_family_names() -> None:
    assert [images.family_name(p) for p in images.FAMILY] == ["minbase", "nginx", "postgresql", "python3", "openssh"]
