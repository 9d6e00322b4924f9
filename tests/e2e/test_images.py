"""Issue 14's acceptance, end to end through `softudc image ...` (marker `images`).

One store per module: two Debian images built by debootstrap (minbase, +nginx-light; cached in
/var/tmp/softudc-debootstrap-cache or $SOFTUDC_DEBOOTSTRAP_CACHE, so only the first run needs the
package registry) and a third imported from a qcow2 that mke2fs -d and qemu-img made. Every claim
is checked against an independent tool: dpkg-query in a chroot of the same tree, GNU diff -r, the
test guest booted from the materialized disk (it prints the sha256 of what it reads), and the
store's own files for dedupe, GC and corruption.

Needs root (chroot, mknod in staging trees), debootstrap, e2fsprogs, qemu and the test guest
(`make guest`). Heavy: run under `flock /tmp/softudc-e2e.lock`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from softudc.images.build import build_debian, cached_tree
from softudc.images.manifest import Entry, ManifestError, index, manifest_bytes, parse_manifest
from softudc.images.store import ImageError, ImageStore

pytestmark = pytest.mark.images
BUILD_CACHE = Path(os.environ.get("SOFTUDC_DEBOOTSTRAP_CACHE", "/var/tmp/softudc-debootstrap-cache"))
WEB_PACKAGES = ("nginx-light",)
PATCHED = "hostname"  # an Essential, tiny package of every minbase image
MARK = "/usr/share/doc/hostname/softudc-patched"


@dataclass
class World:
    root: Path                  # the image store directory
    work: Path                  # scratch: extracted trees, disks, debs
    trees: dict[str, Path]     # image name -> the tree it was built from, extracted by GNU tar
    digests: dict[str, str]    # image name -> its first version


def cli(world: World, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "softudc.cli", "image", "--images", str(world.root), *args],
                          capture_output=True, text=True, timeout=1800)
    if ok and done.returncode != 0:
        raise AssertionError(f"softudc image {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def cli_json(world: World, *args: str) -> Any:
    return json.loads(cli(world, *args).stdout)


def extract(tarball: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(f"zstd -dc {tarball} | tar --xattrs --xattrs-include='*' --numeric-owner -xpf - -C {dest}",
                   shell=True, check=True)
    return dest


def open_store(world: World) -> ImageStore:
    return ImageStore.open(world.root)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        pytest.skip("needs root and debootstrap")
    work = tmp_path_factory.mktemp("images-e2e")
    w = World(work / "store", work, {}, {})
    store = ImageStore.open(w.root)
    try:
        for name, packages in (("base", ()), ("web", WEB_PACKAGES)):
            w.digests[name] = build_debian(store, name, packages=packages, cache_dir=BUILD_CACHE, progress=print).digest
            w.trees[name] = extract(cached_tree(BUILD_CACHE, "bookworm", packages=packages), work / name)
    finally:
        store.close()
    # The third image: the base tree plus a file of its own, made into a qcow2 by other tools.
    third = work / "third"
    subprocess.run(["cp", "-a", str(w.trees["base"]), str(third)], check=True)  # devices as devices
    (third / "etc" / "third-marker").write_text("made by mke2fs -d and qemu-img\n")
    raw, qcow2 = work / "third.raw", work / "third.qcow2"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(third), str(raw), "1G"], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    w.trees["third"] = third
    w.digests["third"] = cli_json(w, "import", "third", "--disk", str(qcow2), "-o", "json")["digest"]
    yield w
    shutil.rmtree(work)  # extracted trees and disks: a few GB per run otherwise


def dpkg_query(tree: Path) -> set[tuple[str, str]]:
    out = subprocess.run(["chroot", str(tree), "dpkg-query", "-W"], capture_output=True, text=True, check=True).stdout
    return {tuple(line.split("\t")) for line in out.splitlines()}  # type: ignore[misc]


@pytest.mark.parametrize("name", ["base", "web", "third"])
def test_inspect_lists_what_dpkg_query_prints_in_a_chroot(world: World, name: str) -> None:
    seen = cli_json(world, "inspect", name, "-o", "json")
    ours = {(p["name"], p["version"]) for p in seen["packages"]}
    assert ours == dpkg_query(world.trees[name])
    assert seen["os"]["ID"] == "debian" and seen["version"] == world.digests[name]
    if name == "web":
        assert any(p == "nginx-light" for p, _ in ours)


def diff_r(a: Path, b: Path) -> tuple[set[str], set[str], set[str]]:
    """(only in a, only in b, differ) as GNU diff -rq reports them, as image paths."""
    done = subprocess.run(["diff", "-rq", "--no-dereference", str(a), str(b)], capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    only_a: set[str] = set()
    only_b: set[str] = set()
    differ: set[str] = set()
    for line in done.stdout.splitlines():
        if m := re.fullmatch(r"Only in (.+): (.+)", line):
            where = m.group(1).rstrip("/")
            side, base = (only_a, a) if where == str(a) or where.startswith(f"{a}/") else (only_b, b)
            side.add(f"{where[len(str(base)):]}/{m.group(2)}")
        elif m := re.fullmatch(r"(?:Files|Symbolic links) (.+) and (.+) differ", line):
            differ.add(m.group(1)[len(str(a)):])
        elif m := re.fullmatch(r"File (.+) is a (.+) while file (.+) is a (.+)", line):
            if m.group(2) != m.group(4):  # diff cannot compare two devices or fifos: not a difference
                differ.add(m.group(1)[len(str(a)):])
        else:
            raise AssertionError(f"unexpected diff line: {line}")
    return only_a, only_b, differ


def test_diff_matches_gnu_diff_r(world: World) -> None:
    got = cli_json(world, "diff", "base", "web", "-o", "json")
    added = {e["path"] for e in got["files"]["added"]}
    removed = {e["path"] for e in got["files"]["removed"]}
    # diff -r names a new directory once, not what is in it
    top = {p for p in added if (p.rsplit("/", 1)[0] or "/") not in added}
    top_removed = {p for p in removed if (p.rsplit("/", 1)[0] or "/") not in removed}
    changed = {c["path"] for c in got["files"]["changed"]
               if {"content", "target"} & set(c["changed"]) or c["a"]["type"] != c["b"]["type"]}
    only_base, only_web, differ = diff_r(world.trees["base"], world.trees["web"])
    assert (top_removed, top, changed) == (only_base, only_web, differ)
    assert any(p["name"] == "nginx-light" for p in got["packages"]["added"])


def newer_deb(world: World, version: str) -> tuple[Path, dict[str, str]]:
    """The real `hostname` package from the registry, repacked as a newer version with one new
    file and one changed file: returns the .deb and the sha256 of those two files."""
    work = world.work / "deb"
    work.mkdir()
    kept = BUILD_CACHE / "debs"  # beside the debootstrap trees, so later runs work offline
    kept.mkdir(exist_ok=True)
    os.chmod(kept, 0o755)  # apt-get download drops to _apt
    if not list(kept.glob(f"{PATCHED}_{version.replace(':', '%3a')}_*.deb")):
        subprocess.run(["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", f"{PATCHED}={version}"],
                       cwd=kept, check=True)
    (deb,) = kept.glob(f"{PATCHED}_{version.replace(':', '%3a')}_*.deb")
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    token = secrets.token_hex(8)
    (tree / MARK.lstrip("/")).write_text(f"patched by the images e2e test {token}\n")
    copyright_file = tree / "usr/share/doc/hostname/copyright"
    copyright_file.write_text(copyright_file.read_text() + f"\nPatched: {token}\n")
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"(?m)^Version: (.+)$", r"Version: \1+softudc1", control.read_text()))
    sums = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(tree)}"
            for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink() and "DEBIAN" not in p.parts]
    (tree / "DEBIAN/md5sums").write_text("\n".join(sums) + "\n")
    out = work / f"{PATCHED}_{version}+softudc1_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True, capture_output=True)
    want = {p: hashlib.sha256((tree / p.lstrip("/")).read_bytes()).hexdigest()
            for p in (MARK, "/usr/share/doc/hostname/copyright")}
    return out, want


def boot(world: World, ref: str, *paths: str) -> dict[str, Any]:
    args = [a for p in paths for a in ("--check", p)]
    seen: dict[str, Any] = cli_json(world, "boot", ref, *args, "--json")
    assert seen["mounted"] and seen["os"].startswith("Debian GNU/Linux 12"), seen
    return seen


def test_patch_materialize_boot_and_the_old_version_is_unchanged(world: World) -> None:
    old = world.digests["base"]
    store = open_store(world)
    old_manifest = store.content.get(old)
    old_status = index(store.manifest(old))["/var/lib/dpkg/status"]
    store.close()
    version = next(p["version"] for p in cli_json(world, "inspect", "base", "-o", "json")["packages"]
                   if p["name"] == PATCHED)
    deb, want = newer_deb(world, version)
    cli(world, "patch", "base", "--deb", str(deb))
    new = cli_json(world, "inspect", "base", "-o", "json")
    assert new["version"] != old and new["parents"] == [old]
    assert {p["name"]: p["version"] for p in new["packages"]}[PATCHED] == f"{version}+softudc1"

    checks = (MARK, "/usr/share/doc/hostname/copyright", "/var/lib/dpkg/status", "/usr/bin/hostname")
    seen_new = boot(world, "base", *checks)
    for path, sha in want.items():
        assert seen_new["checks"][path] == f"sha256={sha}"
    store = open_store(world)
    status = index(store.manifest(new["version"]))["/var/lib/dpkg/status"]
    assert seen_new["checks"]["/var/lib/dpkg/status"] == "sha256=" + status.digest.removeprefix("sha256:")
    assert f"{version}+softudc1" in store.content.read(status).decode()

    # the old version: the same manifest, the same bytes, and it still boots with the old files
    assert store.content.get(old) == old_manifest
    store.close()
    seen_old = boot(world, "base:1", *checks)
    assert seen_old["checks"][MARK] == "missing"
    assert seen_old["checks"]["/var/lib/dpkg/status"] == "sha256=" + old_status.digest.removeprefix("sha256:")
    assert seen_old["checks"]["/usr/bin/hostname"] == seen_new["checks"]["/usr/bin/hostname"]  # not in the diff


def test_materialize_is_cached_and_reproducible(world: World) -> None:
    first = Path(cli(world, "materialize", "web").stdout.strip())
    again = cli(world, "materialize", "web")
    assert Path(again.stdout.strip()) == first and "cached" in again.stderr
    store = open_store(world)
    from softudc.images.materialize import materialize

    other = materialize(store, "web", cache_dir=world.work / "disks2")
    store.close()
    assert subprocess.run(["cmp", str(first), str(other)]).returncode == 0
    fsck = subprocess.run(["e2fsck", "-fn", str(first)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_third_image_boots(world: World) -> None:
    seen = boot(world, "third", "/etc/third-marker", "/etc/os-release")
    want = hashlib.sha256((world.trees["third"] / "etc/third-marker").read_bytes()).hexdigest()
    assert seen["checks"]["/etc/third-marker"] == f"sha256={want}"
    assert seen["checks"]["/etc/os-release"] == "symlink=../usr/lib/os-release"


def objects_on_disk(root: Path) -> list[str]:
    return ["sha256:" + p.name.removesuffix(".zst") for p in (root / "objects").glob("*/*.zst")]


def test_a_shared_object_is_stored_once(world: World) -> None:
    store = open_store(world)
    files = {name: {e.path: e for e in store.manifest(d) if e.type == "file"} for name, d in world.digests.items()}
    store.close()
    dpkg_bin = files["base"]["/usr/bin/dpkg"].digest
    assert all(f["/usr/bin/dpkg"].digest == dpkg_bin for f in files.values())
    on_disk = objects_on_disk(world.root)
    assert on_disk.count(dpkg_bin) == 1 and len(on_disk) == len(set(on_disk))
    shared = set.intersection(*({o for e in f.values() for o in e.chunks or (e.digest,)} for f in files.values()))
    assert len(shared) > 1000 and shared <= set(on_disk)


def users_of(store: ImageStore, digest: str) -> set[tuple[str, str]]:
    """(tag, path) of every tagged version holding `digest`, from the manifests themselves."""
    out = set()
    for tag, version in store.tags().items():
        for e in store.manifest(version):
            if e.type == "file" and digest in (e.digest, *e.chunks):
                out.add((tag, e.path))
    return out


def test_verify_names_a_corrupt_object_with_every_image_and_path(world: World) -> None:
    store = open_store(world)
    victim = index(store.manifest(world.digests["base"]))["/usr/bin/dpkg"].digest
    expected = users_of(store, victim)
    path = store.content.path_of(victim)
    store.close()
    good = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(good[:-8] + bytes(b ^ 0xFF for b in good[-8:]))
    try:
        done = cli(world, "verify", "-o", "json", ok=False)
        assert done.returncode == 1 and "bad objects" in done.stderr
        report = json.loads(done.stdout)
        (problem,) = report["problems"]
        assert problem["digest"] == victim and problem["kind"] == "corrupt"
        named = {(tag, u["path"]) for u in problem["users"] for tag in u["image"].split(", ")}
        assert named == expected
        assert {"base:latest", "web:latest", "third:latest"} <= {t for t, _ in expected}
    finally:
        path.write_bytes(good)
    assert json.loads(cli(world, "verify", "-o", "json").stdout)["ok"]


def bad_tar(members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar of (name, file content | symlink target) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, what in members:
            info = tarfile.TarInfo(name)
            if isinstance(what, str):
                info.type, info.linkname = tarfile.SYMTYPE, what
                tar.addfile(info)
            else:
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
    return buf.getvalue()


def test_bad_input_gives_clear_errors_and_stores_nothing(world: World) -> None:
    store = open_store(world)
    before, tags, versions = sorted(store.content.objects()), store.tags(), store.versions()
    qcow2 = world.work / "truncated.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", "-f", "raw",
                    cli(world, "materialize", "base:1").stdout.strip(), str(qcow2)], check=True)
    qcow2.write_bytes(qcow2.read_bytes()[: qcow2.stat().st_size // 2])
    tars: dict[str, list[tuple[str, bytes | str]]] = {"dotdot": [("etc/ok", b"fine"), ("../escape", b"x")],
            "abs-symlink-escape": [("etc/ok", b"fine"), ("etc/up", "../../../.."), ("etc/up/tmp/x", b"x")],
            "through-symlink": [("root", "/"), ("root/etc/passwd", b"x")]}
    cases: list[tuple[str, list[str]]] = [("truncated", ["--disk", str(qcow2)])]
    for name, members in tars.items():
        (world.work / f"{name}.tar").write_bytes(bad_tar(members))
        cases.append((name, ["--tar", str(world.work / f"{name}.tar")]))
    for name, source in cases:
        done = cli(world, "import", "bad", *source, ok=False)
        assert done.returncode == 1, (name, done.stdout)
        message = done.stderr.strip()
        assert message.startswith("softudc: ") and len(message.splitlines()) <= 3, (name, message)
        assert source[1] in message, (name, message)  # names the input
    # a manifest with a bad digest: refused, naming line and field; one whose content is absent: refused
    good = manifest_bytes(store.manifest("web"))
    bad_line = next(i for i, line in enumerate(good.splitlines()) if b'"digest"' in line)
    broken = good.splitlines()
    broken[bad_line] = re.sub(rb'"digest":"sha256:[0-9a-f]+"', b'"digest":"sha256:nothex"', broken[bad_line])
    with pytest.raises(ManifestError, match=f"line {bad_line + 1}.*digest"):
        parse_manifest(b"\n".join(broken) + b"\n", source="upload.manifest")
    with pytest.raises(ManifestError, match=r"upload\.manifest"):
        parse_manifest(good, source="upload.manifest", expect="sha256:" + "0" * 64)
    absent = Entry("/etc/absent", "file", 0o644, size=3, digest="sha256:" + "ab" * 32)
    with pytest.raises(ImageError, match="/etc/absent"):
        store.commit([*store.manifest("web"), absent], name="bad", how="test")
    assert sorted(store.content.objects()) == before and store.tags() == tags and store.versions() == versions
    store.close()


def test_gc_frees_exactly_what_no_other_version_holds(world: World) -> None:
    cli(world, "rm", "web")
    store = open_store(world)
    live = set()
    for version in set(store.tags().values()):
        live.add(version)
        for e in store.manifest(version):
            if e.type == "file":
                live.update(e.chunks or (e.digest,))
    everything = dict(store.content.objects())
    store.close()
    doomed = set(everything) - live
    web_only = {e.digest for e in ImageStore.open(world.root).manifest(world.digests["web"]) if e.type == "file"}
    assert doomed and doomed & web_only  # nginx's files go; what base also holds stays
    time.sleep(3)  # GC keeps what is younger than its start (minus 2 s of clock slack)
    dry = cli_json(world, "gc", "--dry-run", "-o", "json")
    assert (dry["swept_objects"], dry["swept_bytes"]) == (len(doomed), sum(everything[d] for d in doomed))
    assert sorted(objects_on_disk(world.root)) == sorted(everything)  # the dry run deleted nothing
    real = cli_json(world, "gc", "-o", "json")
    assert (real["swept_objects"], real["swept_bytes"]) == (dry["swept_objects"], dry["swept_bytes"])
    assert set(objects_on_disk(world.root)) == live
    store = open_store(world)
    from softudc.images.materialize import materialize

    for ref in ("base:1", "base", "third"):  # what remains is whole: every file can be read back
        materialize(store, ref, cache_dir=world.work / "after-gc")
    store.close()
