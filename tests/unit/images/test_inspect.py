"""inspect on an imported Debian-like tree: the OS through /etc/os-release's symlink, the kernel,
the module tree behind /lib -> usr/lib, sizes, and exactly the packages dpkg-query -W lists for
the same tree."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from softudc.images import dpkg
from softudc.images.importtree import import_tree
from softudc.images.inspect import inspect, inspect_bytes, inspect_entries, parse_os_release
from softudc.images.manifest import Entry
from softudc.images.store import ImageStore
from tests.unit.images.debtrees import Pkg, debian_tree, status_paragraph

PKGS = [
    Pkg("base-files", "12.4+deb12u5", {"/etc/debian_version": b"12.5\n"}, conffiles=("/etc/debian_version",)),
    Pkg("dpkg", "1.21.22", {"/usr/bin/dpkg": b"dpkg" * 300}),
    Pkg("libc6", "2.36-9+deb12u4", {"/lib/x86_64-linux-gnu/libc.so.6": b"libc" * 2000}, multi_arch="same"),
    Pkg("tzdata", "2024a-0+deb12u1", {"/usr/share/zoneinfo/UTC": b"TZif"}, arch="all"),
]
REMOVED = status_paragraph(Pkg("oldpkg", "0.9"), "deinstall ok config-files") + "\n" + \
    status_paragraph(Pkg("purged", "1.0"), "purge ok not-installed").replace("Version: 1.0\n", "")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    s = ImageStore.open(tmp_path / "store")
    yield s
    s.close()


def test_inspect_reads_os_kernel_packages_and_sizes(tmp_path: Path, store: ImageStore) -> None:
    tree = debian_tree(tmp_path / "tree", PKGS, extra_status=REMOVED)
    v = import_tree(store, tree, name="deb")
    out = inspect(store, "deb")
    assert out["version"] == v.digest and out["tags"] == ["deb:1", "deb:latest"]
    assert out["os"]["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)" and out["os"]["VERSION_CODENAME"] == "bookworm"
    assert out["kernels"] == [{"path": "/boot/vmlinuz-6.1.0-9-amd64", "version": "6.1.0-9-amd64", "size": 600}]
    assert out["modules"] == ["6.1.0-9-amd64"]
    assert out["architecture"] == "amd64"
    names = [(p["name"], p["version"], p["state"]) for p in out["packages"]]
    assert names == [("base-files", "12.4+deb12u5", "installed"), ("dpkg", "1.21.22", "installed"),
                     ("libc6:amd64", "2.36-9+deb12u4", "installed"), ("oldpkg", "0.9", "config-files"),
                     ("tzdata", "2024a-0+deb12u1", "installed")]
    sizes = out["sizes"]
    files = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sizes["files"] == len(files) and sizes["logical_bytes"] == sum(p.stat().st_size for p in files)
    assert sizes["by_top_dir"]["/usr"] > 8000 and sizes["by_type"]["symlink"] == 3


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query")
def test_packages_are_what_dpkg_query_prints(tmp_path: Path, store: ImageStore) -> None:
    tree = debian_tree(tmp_path / "tree", PKGS, extra_status=REMOVED)
    (tree / "var/lib/dpkg/available").write_bytes(b"")
    (tree / "var/lib/dpkg/updates").mkdir()
    import_tree(store, tree, name="deb")
    want = subprocess.run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W"], capture_output=True, text=True,
                          check=True).stdout
    got = "".join(f"{p['name']}\t{p['version']}\n" for p in inspect(store, "deb")["packages"])
    assert got == want


def test_a_tree_without_dpkg_or_os_release(store: ImageStore, tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t/hello").write_bytes(b"hi")
    import_tree(store, tmp_path / "t", name="bare")
    out = inspect(store, "bare")
    assert out["os"] is None and out["packages"] == [] and out["kernels"] == [] and out["modules"] == []
    assert out["sizes"]["files"] == 1 and out["sizes"]["logical_bytes"] == 2


def test_status_is_read_once_per_digest(tmp_path: Path, store: ImageStore) -> None:
    tree = debian_tree(tmp_path / "tree", PKGS)
    import_tree(store, tree, name="a")
    (tree / "etc/extra").write_bytes(b"x")
    import_tree(store, tree, name="b")       # another version, the same status object
    dpkg.CACHE._parsed.clear()
    reads: list[str] = []

    def read(e: Entry) -> bytes:
        reads.append(e.path)
        return store.content.read(e)

    for ref in ("a", "b", "a"):
        inspect_entries(store.manifest(ref), read)
    assert reads.count("/var/lib/dpkg/status") == 1


def test_os_release_parsing() -> None:
    got = parse_os_release(b'# comment\nID=debian\nNAME="Debian \\"x\\""\nBAD LINE\nX=\'single q\'\nU="open\n')
    assert got == {"ID": "debian", "NAME": 'Debian "x"', "X": "single q", "U": '"open'}


def test_inspect_from_bytes_equals_inspect_from_entries(tmp_path: Path, store: ImageStore) -> None:
    tree = debian_tree(tmp_path / "tree", PKGS, extra_status=REMOVED)
    (tree / "usr/lib/modules/6.1.0-9-amd64/kernel").mkdir()
    (tree / "boot/config-6.1.0-9-amd64").write_bytes(b"")
    (tree / 'odd "name\\é').write_bytes(b"")
    v = import_tree(store, tree, name="deb")
    entries = store.manifest("deb")
    ours = inspect_bytes(store.content.get(v.digest), store.content.read)
    assert ours == inspect_entries(entries, store.content.read)
    assert ours["modules"] == ["6.1.0-9-amd64"] and len(ours["kernels"]) == 1
