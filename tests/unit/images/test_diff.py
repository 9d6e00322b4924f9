"""diff of two imported trees against an independent `diff -rq` of the same trees, what a changed
entry says changed, and the package view."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.images.diff import diff, diff_bytes, diff_files, diff_packages
from softudc.images.dpkg import Package
from softudc.images.importtree import import_tree
from softudc.images.manifest import Entry, manifest_bytes, parse_manifest
from softudc.images.store import ImageStore
from tests.unit.images.debtrees import Pkg, debian_tree, write

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    s = ImageStore.open(tmp_path / "store")
    yield s
    s.close()


def two_trees(tmp: Path) -> tuple[Path, Path]:
    a, b = tmp / "a", tmp / "b"
    for root in (a, b):
        write(root, "/same/file", b"same")
        write(root, "/same/deep/x", b"x" * 5000)
        os.symlink("file", root / "same/link")
    write(a, "/changed", b"old content")
    write(b, "/changed", b"new content")
    write(a, "/samesize", b"aaaa")
    write(b, "/samesize", b"bbbb")
    write(a, "/gone", b"bye")
    write(a, "/gonedir/inner/f", b"f")
    write(b, "/newdir/inner/g", b"g")
    write(b, "/new", b"hello")
    write(a, "/becomes-dir", b"file")
    write(b, "/becomes-dir/child", b"c")
    write(a, "/mode", b"m", 0o644)
    write(b, "/mode", b"m", 0o600)
    os.symlink("one", a / "retarget")
    os.symlink("two", b / "retarget")
    return a, b


def diff_rq(a: Path, b: Path) -> dict[str, set[str]]:
    """`diff -rq --no-dereference` read back as added/removed/content/type path sets."""
    out = subprocess.run(["diff", "-rq", "--no-dereference", str(a), str(b)], capture_output=True, text=True).stdout
    got: dict[str, set[str]] = {"added": set(), "removed": set(), "content": set(), "type": set()}

    def rel(root: Path, path: str) -> str:
        return "/" + os.path.relpath(path, root).removeprefix(".").lstrip("/")

    for line in out.splitlines():
        if m := re.fullmatch(r"Only in (.*): (.*)", line):
            where = m.group(1)
            side, root = ("removed", a) if where.startswith(str(a)) else ("added", b)
            got[side].add(rel(root, os.path.join(where, m.group(2))).replace("//", "/"))
        elif m := re.fullmatch(r"(?:Files|Symbolic links) (.*) and (.*) differ", line):
            got["content"].add(rel(a, m.group(1)))
        elif m := re.fullmatch(r"File (.*) is a .* while file (.*) is a .*", line):
            got["type"].add(rel(a, m.group(1)))
        else:
            raise AssertionError(f"unexpected diff output: {line}")
    return got


def topmost(paths: list[str], retyped: set[str]) -> set[str]:
    """What diff -rq names: not what lies under an added, removed or retyped directory."""
    s = set(paths) | retyped
    return {p for p in paths if os.path.dirname(p) not in s}


@pytest.mark.skipif(shutil.which("diff") is None, reason="needs diff")
def test_same_answer_as_diff_rq(tmp_path: Path, store: ImageStore) -> None:
    a, b = two_trees(tmp_path)
    import_tree(store, a, name="a")
    import_tree(store, b, name="b")
    ours = diff(store, "a", "b")
    files = ours["files"]
    theirs = diff_rq(a, b)
    retyped = {c["path"] for c in files["changed"] if c["changed"] == ["type"]}
    assert topmost([e["path"] for e in files["added"]], retyped) == theirs["added"]
    assert topmost([e["path"] for e in files["removed"]], retyped) == theirs["removed"]
    content = {c["path"] for c in files["changed"] if "content" in c["changed"] or "target" in c["changed"]}
    assert content == theirs["content"]
    assert {c["path"] for c in files["changed"] if c["changed"] == ["type"]} == theirs["type"]
    by_path = {c["path"]: c for c in files["changed"]}
    assert by_path["/mode"]["changed"] == ["mode"] and by_path["/mode"]["b"]["mode"] == "0600"
    assert by_path["/retarget"]["changed"] == ["target"] and by_path["/retarget"]["b"]["target"] == "two"
    assert ours["packages"] == {"added": [], "removed": [], "changed": []}
    assert ours["summary"]["files_added"] == len(files["added"])


def test_identical_versions_have_no_difference(tmp_path: Path, store: ImageStore) -> None:
    a, _ = two_trees(tmp_path)
    import_tree(store, a, name="a")
    out = diff(store, "a", "a:1")
    assert out["files"] == {"added": [], "removed": [], "changed": []}


def test_owner_and_xattrs_and_chunking_do_not_hide_or_fake_changes() -> None:
    a = [Entry("/", "dir", 0o755), Entry("/f", "file", 0o644, size=1, digest=D1),
         Entry("/g", "file", 0o644, size=1, digest=D1, xattrs=(("user.x", "eA=="),))]
    b = [Entry("/", "dir", 0o755), Entry("/f", "file", 0o644, uid=1, size=1, digest=D1, chunks=(D2,)),
         Entry("/g", "file", 0o644, size=1, digest=D1)]
    changed = {c["path"]: c["changed"] for c in diff_files(a, b)["changed"]}
    assert changed == {"/f": ["owner"], "/g": ["xattrs"]}


def test_packages_added_removed_and_changed(tmp_path: Path, store: ImageStore) -> None:
    pa = [Pkg("dpkg", "1.21.22"), Pkg("openssl", "3.0.11-1~deb12u2"), Pkg("gone", "1")]
    pb = [Pkg("dpkg", "1.21.22"), Pkg("openssl", "3.0.15-1~deb12u1"), Pkg("nginx", "1.22.1-9")]
    import_tree(store, debian_tree(tmp_path / "a", pa), name="a")
    import_tree(store, debian_tree(tmp_path / "b", pb), name="b")
    out = diff(store, "a", "b")["packages"]
    assert out["added"] == [{"name": "nginx", "version": "1.22.1-9"}]
    assert out["removed"] == [{"name": "gone", "version": "1"}]
    assert out["changed"] == [{"name": "openssl", "a": "3.0.11-1~deb12u2", "b": "3.0.15-1~deb12u1",
                               "state_a": "installed", "state_b": "installed"}]


def test_a_package_state_change_is_a_change() -> None:
    a = [Package("x", "1", "amd64", "install", "installed")]
    b = [Package("x", "1", "amd64", "deinstall", "config-files")]
    assert diff_packages(a, b)["changed"][0]["state_b"] == "config-files"


ENTRY = st.tuples(st.sampled_from(["/x", "/y", "/z", "/d", "/d/x", "/é", '/q"']),
                  st.sampled_from(["file", "dir", "symlink", "fifo"]), st.sampled_from([0o644, 0o600]),
                  st.sampled_from([D1, D2]), st.sampled_from([(), (D2,)]), st.integers(0, 1))


def tree_of(specs: list[tuple[str, str, int, str, tuple[str, ...], int]]) -> list[Entry]:
    out = {"/": Entry("/", "dir", 0o755)}
    for path, kind, mode, digest, chunks, uid in specs:
        is_file = kind == "file"
        out[path] = Entry(path, kind, mode, uid=uid, size=1 if is_file else 0, digest=digest if is_file else "",
                          chunks=chunks if is_file else (), target="t" if kind == "symlink" else "")
    return list(out.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(ENTRY, max_size=8), st.lists(ENTRY, max_size=8))
def test_diff_of_bytes_equals_diff_of_entries(sa: list[Any], sb: list[Any]) -> None:
    da, db = manifest_bytes(tree_of(sa)), manifest_bytes(tree_of(sb))
    got = diff_bytes(da, db, lambda e: b"")
    assert got["files"] == diff_files(parse_manifest(da), parse_manifest(db))
