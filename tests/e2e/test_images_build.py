"""Real Debian images (issue 14, item 2): debootstrap builds, cached, and the same tree imported
three independent ways — the build's tar, the tree GNU tar extracts from it, and a qcow2 disk that
mke2fs -d and qemu-img make of that tree — must give the same manifest.

Needs root and the Debian package registry for the first (cold) build; later runs take the
cached tree from BUILD_CACHE, so they are quick and work offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from softudc.images.build import build_debian, cached_tree
from softudc.images.importdisk import import_disk
from softudc.images.importtree import ImportRefused, import_tree
from softudc.images.manifest import Entry, index
from softudc.images.store import ImageStore, Version

pytestmark = pytest.mark.images
BUILD_CACHE = Path(os.environ.get("SOFTUDC_DEBOOTSTRAP_CACHE", "/var/tmp/softudc-debootstrap-cache"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageStore]:
    s = ImageStore.open(tmp_path_factory.mktemp("images"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def base(store: ImageStore) -> Version:
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        pytest.skip("needs root and debootstrap")
    return build_debian(store, "base", cache_dir=BUILD_CACHE, progress=print)


def tarball() -> Path:
    return cached_tree(BUILD_CACHE, "bookworm")


def without_root_and_lost_found(entries: list[Entry]) -> dict[str, Entry]:
    return {p: e for p, e in index(entries).items() if p != "/" and not p.startswith("/lost+found")}


def test_build_has_a_package_database_and_no_downloads(store: ImageStore, base: Version) -> None:
    m = index(store.manifest("base"))
    assert base.how == "build bookworm minbase"
    assert m["/var/lib/dpkg/status"].size > 10000
    assert "/usr/bin/dpkg" in m and m["/bin"].target == "usr/bin"  # merged /usr
    assert not [p for p in m if p.startswith("/var/cache/apt/archives/") and p.endswith(".deb")]
    assert not [p for p, e in m.items() if p.startswith("/var/lib/apt/lists/") and e.type == "file"]
    assert m["/usr/bin/passwd"].mode & 0o4000  # setuid kept


def test_cached_build_is_the_same_version(store: ImageStore, base: Version) -> None:
    again = build_debian(store, "base", cache_dir=BUILD_CACHE)
    assert again.digest == base.digest and store.resolve("base:2").digest == base.digest


def test_tree_and_disk_imports_agree_with_the_build(store: ImageStore, base: Version, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(f"zstd -dc {tarball()} | tar --xattrs --xattrs-include='*' --numeric-owner -xpf - -C {tree}",
                   shell=True, check=True)
    from_tree = import_tree(store, tree, name="fromtree")
    assert from_tree.digest == base.digest  # same manifest: same identity
    raw, qcow2 = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(raw), "1G"], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    from_disk = import_disk(store, qcow2, name="fromdisk")
    assert without_root_and_lost_found(store.manifest(from_disk.digest)) == \
        without_root_and_lost_found(store.manifest(base.digest))


def test_truncated_qcow2_of_a_real_image_stores_nothing(store: ImageStore, base: Version, tmp_path: Path) -> None:
    qcow2 = tmp_path / "t.qcow2"
    subprocess.run(f"zstd -dc {tarball()} | tar -xpf - -C {tmp_path} ./etc", shell=True, check=True)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tmp_path / "etc"), str(tmp_path / "t.raw"), "64M"],
                   check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(tmp_path / "t.raw"), str(qcow2)], check=True)
    data = qcow2.read_bytes()
    qcow2.write_bytes(data[: len(data) * 2 // 3])
    before, tags = set(store.content.objects()), store.tags()
    with pytest.raises(ImportRefused, match="damaged qcow2"):
        import_disk(store, qcow2, name="broken")
    assert set(store.content.objects()) == before and store.tags() == tags


def test_second_image_shares_content(store: ImageStore, base: Version) -> None:
    before = sum(size for _, size in store.content.objects())
    web = build_debian(store, "web", packages=("nginx-light",), cache_dir=BUILD_CACHE)
    added = sum(size for _, size in store.content.objects()) - before
    m = index(store.manifest(web.digest))
    assert "/usr/sbin/nginx" in m
    shared = {e.digest for e in store.manifest(base.digest) if e.type == "file"} & {
        e.digest for e in m.values() if e.type == "file"}
    assert len(shared) > 1000
    assert added < sum(size for _, size in store.content.objects()) // 3  # most of it was already stored


def test_cli_build_and_import(store: ImageStore, base: Version, tmp_path: Path) -> None:
    def cli(*argv: str) -> dict[str, object]:
        done = subprocess.run([sys.executable, "-m", "softudc.cli", "image", "--images", str(store.root), *argv,
                               "-o", "json"], capture_output=True, text=True, check=True)
        doc: dict[str, object] = json.loads(done.stdout)
        return doc

    built = cli("build", "clibase", "--debootstrap", "bookworm", "--cache", str(BUILD_CACHE))
    assert built["digest"] == base.digest and built["tag"] == "clibase:1" and built["new_bytes_stored"] == 0
    imported = cli("import", "clitar", "--tar", str(tarball()))
    assert imported["digest"] == base.digest
