from __future__ import annotations

import base64
import os
import socket
from pathlib import Path

import pytest

from softudc.images.importtree import ImportRefused, import_tree, read_xattrs, tree_entries
from softudc.images.manifest import digest_of, index
from softudc.images.store import ImageError, ImageStore

ROOT = os.geteuid() == 0


def make_tree(top: Path) -> Path:
    tree = top / "tree"
    (tree / "etc" / "sub").mkdir(parents=True)
    (tree / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    os.link(tree / "etc" / "passwd", tree / "etc" / "passwd-link")
    (tree / "etc" / "empty").write_bytes(b"")
    (tree / "bin").mkdir()
    (tree / "bin" / "su").write_bytes(b"#!/bin/sh\n")
    os.chmod(tree / "bin" / "su", 0o4755)
    os.symlink("../etc/passwd", tree / "bin" / "rel")
    os.symlink("/etc/alternatives/x", tree / "bin" / "abs")
    os.symlink("dangling", tree / "bin" / "dangling")
    os.mkfifo(tree / "etc" / "fifo", 0o600)
    os.setxattr(tree / "etc" / "passwd", "user.note", b"\x00\xffhi")
    os.chmod(tree / "etc" / "sub", 0o700)
    if ROOT:
        os.mknod(tree / "null", 0o666 | 0o020000, os.makedev(1, 3))
        os.chmod(tree / "null", 0o666)
        os.chown(tree / "etc" / "sub", 5, 7)
    return tree


def test_tree_becomes_entries(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path / "store")
    tree = make_tree(tmp_path)
    v = import_tree(store, tree, name="t")
    assert store.resolve("t:1").digest == v.digest
    assert v.how == f"import tree {tree}"
    m = index(store.manifest("t"))
    assert m["/"].type == "dir" and m["/"].mode == 0o755
    assert m["/etc/passwd"].digest == digest_of(b"root:x:0:0\n") and m["/etc/passwd"].size == 11
    assert m["/etc/passwd"].xattrs == (("user.note", base64.b64encode(b"\x00\xffhi").decode()),)
    assert m["/etc/passwd-link"].digest == m["/etc/passwd"].digest
    assert m["/etc/empty"].digest == digest_of(b"") and m["/etc/empty"].size == 0
    assert m["/bin/su"].mode == 0o4755
    assert (m["/bin/rel"].type, m["/bin/rel"].target) == ("symlink", "../etc/passwd")
    assert m["/bin/abs"].target == "/etc/alternatives/x"
    assert m["/bin/dangling"].target == "dangling"
    assert (m["/etc/fifo"].type, m["/etc/fifo"].mode) == ("fifo", 0o600)
    assert m["/etc/sub"].mode == 0o700
    if ROOT:
        assert (m["/null"].type, m["/null"].device, m["/null"].mode) == ("device", "c 1 3", 0o666)
        assert (m["/etc/sub"].uid, m["/etc/sub"].gid) == (5, 7)


def test_hard_links_store_content_once(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path / "store")
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a").write_bytes(b"same" * 100)
    for i in range(5):
        os.link(tree / "a", tree / f"l{i}")
    (tree / "copy").write_bytes(b"same" * 100)
    before = {d for d, _ in store.content.objects()}
    import_tree(store, tree, name="t")
    objects = {d for d, _ in store.content.objects()} - before
    assert digest_of(b"same" * 100) in objects
    assert len(objects) == 2  # the content and the manifest
    assert len([e for e in store.manifest("t") if e.type == "file"]) == 7


def test_socket_is_skipped_with_a_note(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(tree / "sock"))
        notes: list[str] = []
        store = ImageStore.open(tmp_path / "store")
        entries = tree_entries(store.content, tree, notes.append)
    finally:
        s.close()
    assert [e.path for e in entries] == ["/"]
    assert any("/sock" in n and "socket" in n for n in notes)


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    tree = tmp_path / "t"
    tree.mkdir()
    os.symlink(outside, tree / "out")
    store = ImageStore.open(tmp_path / "store")
    m = index(tree_entries(store.content, tree))
    assert set(m) == {"/", "/out"} and m["/out"].target == str(outside)


def test_non_utf8_name_is_refused_and_nothing_committed(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "ok").write_bytes(b"x")
    with open(os.path.join(os.fsencode(tree), b"bad\xff"), "wb") as f:
        f.write(b"y")
    store = ImageStore.open(tmp_path / "store")
    with pytest.raises(ImportRefused, match=r"bad\\xff.*not valid UTF-8"):
        import_tree(store, tree, name="t")
    assert store.tags() == {} and store.versions() == []


def test_root_may_be_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_bytes(b"x")
    os.symlink("t", tmp_path / "link")
    entries = tree_entries(ImageStore.open(tmp_path / "store").content, tmp_path / "link")
    assert [e.path for e in entries] == ["/", "/f"]


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ImportRefused, match="not a directory"):
        import_tree(ImageStore.open(tmp_path / "store"), tmp_path / "f", name="t")


def test_bad_name_refused_before_reading(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path / "store")
    with pytest.raises(ImageError, match="bad image name"):
        import_tree(store, tmp_path, name="-bad")
    assert list(store.content.objects()) == []


def test_read_xattrs_of_a_symlink_is_its_own(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    os.setxattr(tmp_path / "f", "user.a", b"1")
    os.symlink("f", tmp_path / "l")
    assert read_xattrs(tmp_path / "f") == (("user.a", "MQ=="),)
    assert read_xattrs(tmp_path / "l") == ()


def test_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "secret").write_bytes(b"x")
    store = ImageStore.open(tmp_path / "store")

    def denied(*args: object, **kw: object) -> None:
        raise PermissionError(13, "Permission denied", str(tree / "secret"))

    monkeypatch.setattr(store.content, "entry_for_file", denied)
    with pytest.raises(ImportRefused, match=r"cannot import .*/t/secret: Permission denied"):
        import_tree(store, tree, name="t")
    assert store.tags() == {}


def test_a_failed_import_drops_its_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_bytes(b"x")
    store = ImageStore.open(tmp_path / "store")
    leases: list[int] = []

    def refuse(*args: object, **kw: object) -> None:
        leases.append(len(list((store.root / "leases").iterdir())))
        raise ImageError("refused at commit")

    monkeypatch.setattr(store, "commit", refuse)
    with pytest.raises(ImageError, match="refused at commit"):
        import_tree(store, tree, name="t")
    assert leases == [1] and list((store.root / "leases").iterdir()) == []
