"""patch on an imported Debian-like tree with .debs built by dpkg-deb: the new version holds the
new files (through /lib -> usr/lib), loses the ones no longer shipped, keeps a modified conffile,
and its dpkg database agrees with the files (checked by dpkg itself: `dpkg --verify` and
dpkg-query on the staged tree); refusals store nothing; the old version is unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from softudc.images.debpackage import PatchError, read_deb
from softudc.images.dpkg import parse_status
from softudc.images.importtree import import_tree
from softudc.images.inspect import inspect
from softudc.images.manifest import index
from softudc.images.materialize import stage_tree
from softudc.images.patch import patch, patch_all
from softudc.images.store import ImageStore
from tests.unit.images.debtrees import Pkg, build_deb, debian_tree, write

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

SO = "/lib/x86_64-linux-gnu/libssl.so.3"


def ssl(version: str, **files: bytes) -> Pkg:
    base = {"/usr/bin/openssl": f"openssl {version}".encode(), SO: f"libssl {version}".encode(),
            "/etc/ssl/openssl.cnf": b"# default config\n", "/usr/share/doc/openssl/old-notes": b"notes"}
    base.update({k.replace("__", "/").replace("_", "."): v for k, v in files.items()})
    return Pkg("openssl", version, base, conffiles=("/etc/ssl/openssl.cnf",), postinst="#!/bin/sh\nexit 0\n",
               links={"/usr/bin/c_rehash": "openssl"})


OLD = ssl("3.0.11-1~deb12u2")
NEW = Pkg("openssl", "3.0.15-1~deb12u1",
          {"/usr/bin/openssl": b"openssl new", SO: b"libssl new", "/etc/ssl/openssl.cnf": b"# new default\n",
           "/usr/share/doc/openssl/NEWS": b"news"},
          conffiles=("/etc/ssl/openssl.cnf",), postinst="#!/bin/sh\nexit 0\n", links={"/usr/bin/c_rehash": "openssl"})
BASE = [Pkg("dpkg", "1.21.22", {"/usr/bin/dpkg": b"dpkg"})]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    s = ImageStore.open(tmp_path / "store")
    yield s
    s.close()


def image(tmp: Path, store: ImageStore, name: str, pkgs: list[Pkg], modify_conf: bool = False) -> str:
    tree = debian_tree(tmp / f"tree-{name}", [*BASE, *pkgs])
    if modify_conf:
        write(tree, "/etc/ssl/openssl.cnf", b"# my own settings\n")
    return import_tree(store, tree, name=name).digest


def files_of(store: ImageStore, ref: str) -> dict[str, bytes]:
    return {e.path: store.content.read(e) for e in store.manifest(ref) if e.type == "file"}


def test_upgrade_replaces_files_database_and_keeps_the_old_version(tmp_path: Path, store: ImageStore) -> None:
    old = image(tmp_path, store, "web", [OLD])
    before = store.manifest(old)
    notes: list[str] = []
    v = patch(store, "web", [build_deb(tmp_path, NEW)], progress=notes.append)
    assert store.resolve("web").digest == v.digest and store.resolve("web:2").digest == v.digest
    assert v.parents == (old,) and "openssl 3.0.11-1~deb12u2 -> 3.0.15-1~deb12u1" in v.how
    assert "maintainer scripts not run" in v.how
    assert any("warning: openssl" in n and "postinst" in n for n in notes)
    assert store.manifest(old) == before
    files = files_of(store, "web")
    assert files["/usr/bin/openssl"] == b"openssl new"
    assert files["/usr/lib/x86_64-linux-gnu/libssl.so.3"] == b"libssl new"      # through /lib -> usr/lib
    assert index(store.manifest("web"))["/lib"].type == "symlink"
    assert files["/etc/ssl/openssl.cnf"] == b"# new default\n"                   # unmodified: replaced
    assert "/usr/share/doc/openssl/old-notes" not in files and files["/usr/share/doc/openssl/NEWS"] == b"news"
    assert files["/usr/bin/dpkg"] == b"dpkg"
    listed = files["/var/lib/dpkg/info/openssl.list"].decode().splitlines()
    assert listed[0] == "/." and SO in listed and "/usr/share/doc/openssl/old-notes" not in listed
    assert files["/var/lib/dpkg/info/openssl.md5sums"] == NEW.md5sums().encode()
    pkgs = {p["name"]: p["version"] for p in inspect(store, "web")["packages"]}
    assert pkgs == {"dpkg": "1.21.22", "openssl": "3.0.15-1~deb12u1"}


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_dpkg_itself_agrees_with_the_patched_tree(tmp_path: Path, store: ImageStore) -> None:
    image(tmp_path, store, "web", [OLD])
    patch(store, "web", [build_deb(tmp_path, NEW)])
    staged = tmp_path / "staged"
    stage_tree(store.content, store.manifest("web"), staged)
    admin = staged / "var/lib/dpkg"
    (admin / "available").write_bytes(b"")
    (admin / "updates").mkdir(exist_ok=True)
    shown = subprocess.run(["dpkg-query", f"--admindir={admin}", "-W"], capture_output=True, text=True, check=True)
    assert shown.stdout == "dpkg\t1.21.22\nopenssl\t3.0.15-1~deb12u1\n"
    verify = subprocess.run(["dpkg", f"--root={staged}", f"--admindir={admin}", "--verify", "openssl"],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout + verify.stderr
    conf = subprocess.run(["dpkg-query", f"--admindir={admin}", "-W", "-f=${Conffiles}", "openssl"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert conf[0] == "/etc/ssl/openssl.cnf" and len(conf[1]) == 32


def test_a_modified_conffile_is_kept(tmp_path: Path, store: ImageStore) -> None:
    image(tmp_path, store, "web", [OLD], modify_conf=True)
    notes: list[str] = []
    patch(store, "web", [build_deb(tmp_path, NEW)], progress=notes.append)
    assert files_of(store, "web")["/etc/ssl/openssl.cnf"] == b"# my own settings\n"
    assert any("kept the image's modified /etc/ssl/openssl.cnf" in n for n in notes)


@pytest.mark.parametrize(("deb", "message"), [
    (Pkg("openssl", "3.0.15-1", arch="arm64"), "built for arm64"),
    (Pkg("nginx", "1.22.1-9"), "does not have nginx installed"),
    (Pkg("openssl", "3.0.2-1"), "older than the image's"),
    (Pkg("openssl", "3.0.11-1~deb12u2"), "already has openssl"),
])
def test_refusals_store_nothing(tmp_path: Path, store: ImageStore, deb: Pkg, message: str) -> None:
    image(tmp_path, store, "web", [OLD])
    objects, tags = sorted(store.content.objects()), store.tags()
    with pytest.raises(PatchError, match=message):
        patch(store, "web", [build_deb(tmp_path, deb)])
    assert sorted(store.content.objects()) == objects and store.tags() == tags


def test_downgrade_when_allowed(tmp_path: Path, store: ImageStore) -> None:
    image(tmp_path, store, "web", [OLD])
    v = patch(store, "web", [build_deb(tmp_path, ssl("3.0.2-1"))], allow_downgrade=True, name="web-old")
    assert store.tags()["web-old:1"] == v.digest and store.resolve("web").parents == ()


def test_not_a_deb(tmp_path: Path, store: ImageStore) -> None:
    (tmp_path / "x.deb").write_bytes(b"!<arch>\nnonsense")
    with pytest.raises(PatchError, match=r"not a readable \.deb"):
        read_deb(tmp_path / "x.deb")
    image(tmp_path, store, "web", [OLD])
    with pytest.raises(PatchError, match=r"no \.deb given"):
        patch(store, "web", [])


def test_multi_arch_same_package(tmp_path: Path, store: ImageStore) -> None:
    libc = Pkg("libc6", "2.36-9+deb12u4", {"/lib/x86_64-linux-gnu/libc.so.6": b"old", "/usr/lib/gone": b"x"},
               multi_arch="same")
    image(tmp_path, store, "base", [libc])
    newer = Pkg("libc6", "2.36-9+deb12u7", {"/lib/x86_64-linux-gnu/libc.so.6": b"new"}, multi_arch="same")
    patch(store, "base", [build_deb(tmp_path, newer)])
    files = files_of(store, "base")
    assert files["/usr/lib/x86_64-linux-gnu/libc.so.6"] == b"new" and "/usr/lib/gone" not in files
    assert "/var/lib/dpkg/info/libc6:amd64.list" in files and "/var/lib/dpkg/info/libc6.list" not in files


def test_patch_all_images_with_a_package(tmp_path: Path, store: ImageStore) -> None:
    image(tmp_path, store, "web", [OLD])
    image(tmp_path, store, "db", [OLD])
    image(tmp_path, store, "new", [NEW])
    image(tmp_path, store, "bare", [])
    out = patch_all(store, "openssl", [build_deb(tmp_path, NEW)], progress=lambda _m: None)
    done = {r["image"]: r for r in out}
    assert set(done) == {"db:latest", "new:latest", "web:latest"}
    assert "skipped" in done["new:latest"] and "version" in done["web:latest"]
    assert store.resolve("web").digest == done["web:latest"]["version"] and "bare:2" not in store.tags()
    # both patched images started from the same tree, so they land on the same new version
    assert done["web:latest"]["version"] == done["db:latest"]["version"]


ADMIN_ONLY = ("available", "lock", "lock-frontend", "status-old", "triggers", "updates", "info/format")


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_same_tree_as_dpkg_unpack(tmp_path: Path, store: ImageStore) -> None:
    """Differential: dpkg itself unpacks the same .deb into the same tree (--root, no scripts to
    chroot for). The trees match but for dpkg's bookkeeping, and for what its later configure
    step does: ours has the new conffile in place (and its md5 in Conffiles) where dpkg leaves it
    as .dpkg-new, and ours says `installed` where dpkg says `unpacked` (with a Config-Version)."""
    image(tmp_path, store, "web", [OLD])
    deb = build_deb(tmp_path, NEW)
    patch(store, "web", [deb])
    ours = tmp_path / "ours"
    stage_tree(store.content, store.manifest("web"), ours)
    real = tmp_path / "tree-web"
    (real / "var/lib/dpkg/updates").mkdir()
    (real / "var/lib/dpkg/available").write_bytes(b"")
    subprocess.run(["dpkg", f"--root={real}", "--unpack", str(deb)], check=True, capture_output=True)
    differ = subprocess.run(["diff", "-rq", "--no-dereference", str(ours), str(real)], capture_output=True,
                            text=True).stdout.splitlines()
    admin = [f"Only in {real}/var/lib/dpkg{'/' + p.rsplit('/', 1)[0] if '/' in p else ''}: {p.rsplit('/', 1)[-1]}"
             for p in ADMIN_ONLY]
    conf = "etc/ssl/openssl.cnf"
    assert sorted(set(differ) - set(admin)) == sorted([
        f"Files {ours}/{conf} and {real}/{conf} differ", f"Only in {real}/etc/ssl: openssl.cnf.dpkg-new",
        f"Files {ours}/var/lib/dpkg/status and {real}/var/lib/dpkg/status differ"])
    assert (ours / conf).read_bytes() == (real / f"{conf}.dpkg-new").read_bytes()
    theirs = paragraph((real / "var/lib/dpkg/status").read_bytes(), "openssl")
    theirs = theirs.replace("install ok unpacked", "install ok installed")
    old_md5, new_md5 = (hashlib.md5(p.files["/" + conf]).hexdigest() for p in (OLD, NEW))
    theirs = theirs.replace(old_md5, new_md5)   # configure records the new shipped md5
    theirs = "".join(line for line in theirs.splitlines(keepends=True) if not line.startswith("Config-Version:"))
    assert paragraph((ours / "var/lib/dpkg/status").read_bytes(), "openssl") == theirs


def paragraph(status: bytes, name: str) -> str:
    p = next(p for p in parse_status(status) if p.name == name)
    return status[p.start:p.end].decode()


def test_diverted_files_land_where_the_diversion_says(tmp_path: Path, store: ImageStore) -> None:
    tree = debian_tree(tmp_path / "tree", [*BASE, OLD])
    (tree / "usr/bin/openssl.real").write_bytes(b"openssl 3.0.11-1~deb12u2")
    (tree / "usr/bin/openssl").write_bytes(b"a wrapper")
    (tree / "var/lib/dpkg/diversions").write_text("/usr/bin/openssl\n/usr/bin/openssl.real\nwrapper\n")
    import_tree(store, tree, name="web")
    patch(store, "web", [build_deb(tmp_path, NEW)])
    files = files_of(store, "web")
    assert files["/usr/bin/openssl.real"] == b"openssl new" and files["/usr/bin/openssl"] == b"a wrapper"


def test_broken_dependencies_are_refused(tmp_path: Path, store: ImageStore) -> None:
    common = Pkg("web-common", "1.0-1", {"/etc/web": b"1"})
    web = Pkg("web", "1.0-1", {"/usr/bin/web": b"1"}, relations="Depends: web-common (<< 1.0-1.1~)\n")
    image(tmp_path, store, "img", [common, web])
    common2 = build_deb(tmp_path, Pkg("web-common", "2.0-1", {"/etc/web": b"2"}))
    web2 = build_deb(tmp_path, Pkg("web", "2.0-1", {"/usr/bin/web": b"2"},
                                   relations="Depends: web-common (>= 2.0-1)\n"))
    objects = sorted(store.content.objects())
    with pytest.raises(PatchError, match=r"would break dependencies: web 1.0-1 depends on web-common \(<< 1.0-1.1~\)"):
        patch(store, "img", [common2])
    with pytest.raises(PatchError, match=r"web 2.0-1 depends on web-common \(>= 2.0-1\)"):
        patch(store, "img", [web2])
    assert sorted(store.content.objects()) == objects
    v = patch(store, "img", [web2, common2])
    assert "web 1.0-1 -> 2.0-1" in v.how and "web-common 1.0-1 -> 2.0-1" in v.how
    patch(store, "img:1", [common2], force_depends=True, name="forced")
    assert {p["name"]: p["version"] for p in inspect(store, "forced")["packages"]}["web-common"] == "2.0-1"


def test_patch_all_applies_what_fits_each_image(tmp_path: Path, store: ImageStore) -> None:
    libfoo = Pkg("libfoo", "1", {"/usr/lib/libfoo": b"1"})
    image(tmp_path, store, "both", [OLD, libfoo])
    image(tmp_path, store, "sslonly", [OLD])
    debs = [build_deb(tmp_path, NEW), build_deb(tmp_path, Pkg("libfoo", "2", {"/usr/lib/libfoo": b"2"}))]
    out = {r["image"]: r for r in patch_all(store, "openssl", debs)}
    assert "libfoo 1 -> 2" in out["both:latest"]["how"] and "libfoo" not in out["sslonly:latest"]["how"]
    again = {r["image"]: r for r in patch_all(store, "openssl", debs)}
    assert set(again) == {"both:latest", "sslonly:latest"} and all("skipped" in r for r in again.values())


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_files_taken_over_from_another_package(tmp_path: Path, store: ImageStore) -> None:
    """B 2 now ships A's /usr/bin/tool (Replaces: a): A's list loses it, as dpkg --unpack does."""
    a = Pkg("a", "1", {"/usr/bin/tool": b"a's tool", "/usr/bin/a": b"a"})
    b = Pkg("b", "1", {"/usr/bin/b": b"b"})
    image(tmp_path, store, "img", [a, b])
    b2 = build_deb(tmp_path, Pkg("b", "2", {"/usr/bin/b": b"b2", "/usr/bin/tool": b"b's tool"},
                                 relations="Replaces: a (<< 2)\n"))
    notes: list[str] = []
    patch(store, "img", [b2], progress=notes.append)
    assert not [n for n in notes if "overwrote" in n]
    files = files_of(store, "img")
    real = tmp_path / "tree-img"
    (real / "var/lib/dpkg/updates").mkdir()
    (real / "var/lib/dpkg/available").write_bytes(b"")
    subprocess.run(["dpkg", f"--root={real}", "--unpack", str(b2)], check=True, capture_output=True)
    for name in ("a.list", "b.list"):
        assert files[f"/var/lib/dpkg/info/{name}"] == (real / "var/lib/dpkg/info" / name).read_bytes()
    a2 = build_deb(tmp_path, Pkg("a", "2", {"/usr/bin/a": b"a2"}))
    patch(store, "img", [a2])
    assert files_of(store, "img")["/usr/bin/tool"] == b"b's tool"     # not A's to remove any more


def test_overwriting_without_replaces_warns(tmp_path: Path, store: ImageStore) -> None:
    image(tmp_path, store, "img", [Pkg("a", "1", {"/usr/bin/tool": b"a"}), Pkg("b", "1", {"/usr/bin/b": b"b"})])
    notes: list[str] = []
    patch(store, "img", [build_deb(tmp_path, Pkg("b", "2", {"/usr/bin/tool": b"b"}))], progress=notes.append)
    assert any("b overwrote 1 files of a, which it does not Replace" in n for n in notes)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_install_a_new_package_where_dpkg_puts_it(tmp_path: Path, store: ImageStore) -> None:
    image(tmp_path, store, "img", [Pkg("eee", "1"), OLD])   # after BASE's dpkg: a sorted status file
    extra = Pkg("libnew", "1.0", {"/usr/lib/libnew.so": b"new"}, relations="Depends: eee\n")
    deb = build_deb(tmp_path, extra)
    with pytest.raises(PatchError, match="give --install"):
        patch(store, "img", [deb])
    v = patch(store, "img", [deb], install=True)
    assert "libnew (not installed) -> 1.0" in v.how
    files = files_of(store, "img")
    assert files["/usr/lib/libnew.so"] == b"new" and "/var/lib/dpkg/info/libnew.list" in files
    real = tmp_path / "tree-img"
    (real / "var/lib/dpkg/updates").mkdir()
    (real / "var/lib/dpkg/available").write_bytes(b"")
    subprocess.run(["dpkg", f"--root={real}", "--unpack", str(deb)], check=True, capture_output=True)
    theirs = (real / "var/lib/dpkg/status").read_bytes()
    ours = files["/var/lib/dpkg/status"]
    assert [p.name for p in parse_status(ours)] == [p.name for p in parse_status(theirs)] == \
        ["dpkg", "eee", "libnew", "openssl"]
    assert paragraph(ours, "libnew") == paragraph(theirs, "libnew").replace("install ok unpacked",
                                                                            "install ok installed")
    assert files["/var/lib/dpkg/info/libnew.list"] == (real / "var/lib/dpkg/info/libnew.list").read_bytes()


def test_install_needs_its_dependencies(tmp_path: Path, store: ImageStore) -> None:
    image(tmp_path, store, "img", [OLD])
    deb = build_deb(tmp_path, Pkg("libnew", "1.0", relations="Depends: missing (>= 1)\n"))
    with pytest.raises(PatchError, match=r"libnew 1.0 depends on missing \(>= 1\)"):
        patch(store, "img", [deb], install=True)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_unpacked_is_what_dpkg_unpack_leaves_and_configures_the_same(tmp_path: Path, store: ImageStore) -> None:
    """--unpacked: the tree and the status paragraph equal dpkg --unpack's, and `dpkg --configure -a`
    then gives the same tree on both."""
    old = Pkg("p", "1", {"/etc/keep.conf": b"k1", "/etc/gone.conf": b"g1", "/usr/bin/p": b"1"},
              conffiles=("/etc/keep.conf", "/etc/gone.conf"))
    new = Pkg("p", "2", {"/etc/keep.conf": b"k2", "/etc/new.conf": b"n2", "/usr/bin/p": b"2"},
              conffiles=("/etc/keep.conf", "/etc/new.conf"))
    image(tmp_path, store, "img", [old])
    deb = build_deb(tmp_path, new)
    v = patch(store, "img", [deb], unpacked=True)
    assert "left unpacked for dpkg --configure -a" in v.how
    ours = tmp_path / "ours"
    stage_tree(store.content, store.manifest("img"), ours)
    real = tmp_path / "tree-img"
    for root in (ours, real):
        (root / "var/lib/dpkg/updates").mkdir(exist_ok=True)
        (root / "var/lib/dpkg/available").write_bytes(b"")
    subprocess.run(["dpkg", f"--root={real}", "--unpack", str(deb)], check=True, capture_output=True)

    def differences() -> set[str]:
        out = subprocess.run(["diff", "-rq", "--no-dereference", str(ours), str(real)], capture_output=True,
                             text=True).stdout.splitlines()
        admin = ("status-old", "lock", "lock-frontend", "triggers", "format", "dpkg.log", "/var/log")
        return {line for line in out if not line.endswith(admin) and "/var/log" not in line}

    status = "var/lib/dpkg/status"
    assert differences() <= {f"Files {ours}/{status} and {real}/{status} differ"}
    assert paragraph((ours / status).read_bytes(), "p") == paragraph((real / status).read_bytes(), "p")
    for root in (ours, real):
        subprocess.run(["dpkg", f"--root={root}", "--configure", "-a"], check=True, capture_output=True)
    assert differences() <= {f"Files {ours}/{status} and {real}/{status} differ"}
    assert paragraph((ours / status).read_bytes(), "p") == paragraph((real / status).read_bytes(), "p")
    assert (ours / "etc/new.conf").read_bytes() == b"n2" and not (ours / "etc/keep.conf.dpkg-new").exists()


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_modes_and_owners_as_dpkg_leaves_them(tmp_path: Path, store: ImageStore) -> None:
    """An existing directory keeps its mode and owner, an unchanged conffile is left alone, a
    dpkg-statoverride applies: compared path by path (lstat) with dpkg --unpack + --configure."""
    old = Pkg("p", "1", {"/usr/share/doc/p/x": b"1", "/usr/bin/p": b"1", "/etc/p.conf": b"c"},
              conffiles=("/etc/p.conf",))
    new = Pkg("p", "2", {"/usr/share/doc/p/x": b"2", "/usr/bin/p": b"2", "/usr/bin/q": b"q", "/etc/p.conf": b"c"},
              conffiles=("/etc/p.conf",))
    real = debian_tree(tmp_path / "real", [*BASE, old])
    for path, mode, owner in (("usr/share/doc/p", 0o700, 5), ("usr/bin/p", 0o700, 7), ("etc/p.conf", 0o600, 9)):
        os.chmod(real / path, mode)
        os.chown(real / path, owner, owner)
    (real / "var/lib/dpkg/statoverride").write_text("#0 #50 4750 /usr/bin/q\n")
    import_tree(store, real, name="img")
    deb = build_deb(tmp_path, new)
    patch(store, "img", [deb])
    ours = tmp_path / "ours"
    stage_tree(store.content, store.manifest("img"), ours)
    (real / "var/lib/dpkg/updates").mkdir()
    (real / "var/lib/dpkg/available").write_bytes(b"")
    for step in (["--unpack", str(deb)], ["--configure", "-a"]):
        subprocess.run(["dpkg", f"--root={real}", *step], check=True, capture_output=True)
    mine = {str(p.relative_to(ours)): os.lstat(p) for p in ours.rglob("*") if "var/lib/dpkg" not in str(p)}
    for rel, st in mine.items():
        theirs = os.lstat(real / rel)
        assert (rel, oct(st.st_mode), st.st_uid, st.st_gid) == (rel, oct(theirs.st_mode), theirs.st_uid, theirs.st_gid)
    assert oct(mine["usr/bin/q"].st_mode) == "0o104750" and mine["usr/share/doc/p"].st_uid == 5


def test_a_failed_patch_leaves_no_lease(tmp_path: Path, store: ImageStore) -> None:
    """Refused halfway (a file where the image has a directory): what was stored may be collected."""
    from softudc.images.leases import oldest_live

    tree = debian_tree(tmp_path / "tree", [*BASE, OLD])
    (tree / "usr/bin/clash").mkdir()
    (tree / "usr/bin/clash/inside").write_bytes(b"x")
    import_tree(store, tree, name="web")
    bad = build_deb(tmp_path, Pkg("openssl", "3.0.15-1~deb12u1", {"/usr/bin/openssl": b"new", "/usr/bin/clash": b"f"}))
    with pytest.raises(PatchError, match="is a directory in the image"):
        patch(store, "web", [bad])
    assert oldest_live(store.content.leases_dir) is None and store.resolve("web").how.startswith("import")
