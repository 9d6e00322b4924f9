from __future__ import annotations

import fcntl
import os
import stat
import subprocess
from pathlib import Path

import pytest

from softudc.images import build
from softudc.images.build import (
    build_debian,
    cache_key,
    check_request,
    debian_mirror,
    remove_stale_work,
    remove_tree,
    slim,
)
from softudc.images.importtar import tar_entries
from softudc.images.importtree import ImportRefused
from softudc.images.manifest import index
from softudc.images.store import ImageError, ImageStore

ROOT = os.geteuid() == 0

SOURCES = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def apt(tmp_path: Path, sources: str = "", lst: str = "") -> Path:
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    if sources:
        (d / "sources.list.d" / "debian.sources").write_text(sources)
    if lst:
        (d / "sources.list").write_text(lst)
    return d


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    d = apt(tmp_path, SOURCES)
    assert debian_mirror("bookworm", d) == "http://mirror.example/debian"
    assert debian_mirror("bookworm-security", d) == "http://mirror.example/debian-security"
    assert debian_mirror("trixie", d) == "http://mirror.example/debian"  # a main archive, not -security


def test_mirror_from_sources_list(tmp_path: Path) -> None:
    d = apt(tmp_path, lst="# comment\ndeb-src http://src.example/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://local.example/debian bookworm main # mirror\n")
    assert debian_mirror("bookworm", d) == "http://local.example/debian"


def test_no_mirror(tmp_path: Path) -> None:
    d = apt(tmp_path, SOURCES.replace("Types: deb", "Types: deb\nEnabled: no"))
    with pytest.raises(ImportRefused, match="no Debian mirror"):
        debian_mirror("bookworm", d)


def test_cache_key_ignores_package_order() -> None:
    a = cache_key("bookworm", "minbase", ["nginx", "curl"], "1.0.128", "amd64")
    assert a == cache_key("bookworm", "minbase", ["curl", "nginx", "curl"], "1.0.128", "amd64")
    assert a != cache_key("bookworm", "minbase", ["curl"], "1.0.128", "amd64")
    assert a != cache_key("bookworm", "minbase", ["curl", "nginx"], "1.0.129", "amd64")


@pytest.mark.parametrize(("suite", "variant", "packages", "why"), [
    ("Bookworm", "minbase", (), "suite"), ("bookworm", "tiny", (), "variant"),
    ("bookworm", "minbase", ("nginx;rm",), "package"), ("bookworm", "minbase", ("-x",), "package")])
def test_bad_requests(suite: str, variant: str, packages: tuple[str, ...], why: str) -> None:
    with pytest.raises(ImportRefused, match=why):
        check_request(suite, variant, packages)


def test_slim(tmp_path: Path) -> None:
    (tmp_path / "var/cache/apt/archives/partial").mkdir(parents=True)
    (tmp_path / "var/cache/apt/archives/a.deb").write_bytes(b"x")
    (tmp_path / "var/cache/apt/archives/lock").write_bytes(b"")
    (tmp_path / "var/lib/apt/lists/partial").mkdir(parents=True)
    (tmp_path / "var/lib/apt/lists/x_Packages").write_bytes(b"x")
    (tmp_path / "var/log").mkdir(parents=True)
    (tmp_path / "var/log/dpkg.log").write_bytes(b"2026-11-26 17:46:00 install ...")
    (tmp_path / "var/log/bootstrap.log").write_bytes(b"...")
    slim(tmp_path)
    assert sorted(p.name for p in (tmp_path / "var/log").iterdir()) == ["dpkg.log"]
    assert (tmp_path / "var/log/dpkg.log").read_bytes() == b""
    assert sorted(p.name for p in (tmp_path / "var/cache/apt/archives").iterdir()) == ["lock", "partial"]
    assert [p.name for p in (tmp_path / "var/lib/apt/lists").iterdir()] == ["partial"]


def test_remove_tree(tmp_path: Path) -> None:
    (tmp_path / "w/root/proc").mkdir(parents=True)
    remove_tree(tmp_path / "w")
    assert not (tmp_path / "w").exists()


FAKE = """#!/bin/sh
# a debootstrap stand-in: --version, or [--variant=V] [--include=P] SUITE TARGET MIRROR
if [ "$1" = "--version" ]; then echo "debootstrap 9.9"; exit 0; fi
for a; do case "$a" in --*) ;; *) set -- "$@" "$a";; esac; shift; done
echo "I: Retrieving from $3"
mkdir -p "$2/etc" "$2/var/cache/apt/archives" "$2/var/lib/apt/lists/partial" "$2/usr/bin"
echo "ID=debian suite $1" > "$2/etc/os-release"
echo deb > "$2/var/cache/apt/archives/base_1_amd64.deb"
echo lists > "$2/var/lib/apt/lists/deb_Packages"
echo su > "$2/usr/bin/su"; chmod 4755 "$2/usr/bin/su"
ln -s /usr/bin "$2/bin"
[ -n "$FAIL" ] && { echo "E: Couldn't find these debs: $FAIL"; exit 1; }
exit 0
"""


@pytest.fixture
def fake_debootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "debootstrap"
    script.write_text(FAKE)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return script


@pytest.mark.skipif(not ROOT, reason="debootstrap (even a stand-in) is only run as root")
def test_build_cold_then_cached(tmp_path: Path, fake_debootstrap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ImageStore.open(tmp_path / "store")
    notes: list[str] = []
    v = build_debian(store, "deb", packages=("nginx",), progress=notes.append, apt_dir=apt(tmp_path, SOURCES))
    assert v.how == "build bookworm minbase +nginx"
    assert any("I: Retrieving from http://mirror.example/debian" in n for n in notes)
    m = index(store.manifest("deb"))
    assert "/etc/os-release" in m and m["/usr/bin/su"].mode == 0o4755 and m["/bin"].target == "/usr/bin"
    assert "/var/cache/apt/archives/base_1_amd64.deb" not in m and "/var/lib/apt/lists/deb_Packages" not in m
    cache = tmp_path / "store" / "cache" / "debootstrap"
    tarballs = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert len(tarballs) == 1 and tarballs[0].startswith("bookworm-minbase-") and tarballs[0].endswith(".tar.zst")

    def no_debootstrap(*args: object, **kw: object) -> None:
        raise AssertionError("a cached build ran debootstrap")

    monkeypatch.setattr(build, "bootstrap_to_cache", no_debootstrap)
    again = build_debian(store, "deb", packages=("nginx",), progress=notes.append, apt_dir=apt(tmp_path / "x", SOURCES))
    assert again.digest == v.digest and store.resolve("deb:2").digest == v.digest
    assert any(n.startswith("cached: ") for n in notes)


@pytest.mark.skipif(not ROOT, reason="debootstrap (even a stand-in) is only run as root")
def test_failed_build_cleans_up(tmp_path: Path, fake_debootstrap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIL", "nosuchpackage")
    store = ImageStore.open(tmp_path / "store")
    cache = tmp_path / "cache"
    with pytest.raises(ImportRefused, match=r"debootstrap failed.*nosuchpackage"):
        build_debian(store, "deb", packages=("nosuchpackage",), cache_dir=cache, apt_dir=apt(tmp_path, SOURCES))
    assert [p.suffix for p in cache.iterdir()] == [".lock"] and store.tags() == {}


def test_bad_name_is_refused_first(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        build_debian(ImageStore.open(tmp_path / "store"), "no:tags", apt_dir=apt(tmp_path, SOURCES))


def test_write_tar_keeps_xattrs_and_devices(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_bytes(b"x")
    os.setxattr(tree / "f", "user.k", b"v")
    if ROOT:
        os.mknod(tree / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    build._write_tar(tree, tmp_path / "t.tar.zst")
    store = ImageStore.open(tmp_path / "store")
    m = index(tar_entries(lambda: build._zst_opener(tmp_path / "t.tar.zst"), store.content, "t.tar.zst"))
    assert m["/f"].xattrs == (("user.k", "dg=="),)
    if ROOT:
        assert m["/null"].device == "c 1 3"


@pytest.mark.skipif(not ROOT, reason="mounting needs root")
def test_remove_tree_unmounts_first(tmp_path: Path) -> None:
    proc = tmp_path / "w/root/proc"
    proc.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "softudc-test", str(proc)], check=True)
    (proc / "kept-by-the-mount").write_bytes(b"x")
    remove_tree(tmp_path / "w")
    assert not (tmp_path / "w").exists()
    assert str(proc) not in Path("/proc/self/mountinfo").read_text()


def test_build_needs_root(tmp_path: Path, fake_debootstrap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImportRefused, match="needs root"):
        build_debian(ImageStore.open(tmp_path / "store"), "deb", apt_dir=apt(tmp_path, SOURCES))


def test_stale_work_directories_go_live_ones_stay(tmp_path: Path) -> None:
    dead, live, other = tmp_path / "softudc-debootstrap-dead", tmp_path / "softudc-debootstrap-live", tmp_path / "x"
    for d in (dead, live, other):
        (d / "root/etc").mkdir(parents=True)
        (d / ".in-use").write_bytes(b"")
    notes: list[str] = []
    with open(live / ".in-use", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        remove_stale_work(tmp_path, notes.append)
    assert not dead.exists() and live.exists() and other.exists()
    assert notes == [f"removing {dead}, left by a build that did not finish"]
