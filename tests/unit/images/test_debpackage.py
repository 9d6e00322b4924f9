"""Reading a .deb built by dpkg-deb: control fields, the info files dpkg keeps, data members as
entries with their contents stored; member paths normalised or refused."""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.images.content import ContentStore
from softudc.images.debpackage import PatchError, member_path, members, read_deb
from tests.unit.images.debtrees import Pkg, build_deb

needs_dpkg_deb = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

PKG = Pkg("libfoo1", "2:1.0-1", {"/usr/lib/x86_64-linux-gnu/libfoo.so.1": b"lib", "/etc/foo.conf": b"conf"},
          conffiles=("/etc/foo.conf",), postinst="#!/bin/sh\n", multi_arch="same",
          links={"/usr/lib/x86_64-linux-gnu/libfoo.so": "libfoo.so.1"})


@needs_dpkg_deb
def test_control_and_info_files(tmp_path: Path) -> None:
    deb = read_deb(build_deb(tmp_path, PKG))
    assert (deb.name, deb.version, deb.architecture, deb.multi_arch) == ("libfoo1", "2:1.0-1", "amd64", "same")
    assert deb.conffiles == ["/etc/foo.conf"] and deb.scripts == ["postinst"]
    assert deb.info_stem() == "libfoo1:amd64"
    assert deb.info["md5sums"][0] == PKG.md5sums().encode() and deb.info["postinst"][1] == 0o755
    assert "control" not in deb.info


@needs_dpkg_deb
def test_members_are_entries_with_stored_content(tmp_path: Path) -> None:
    content = ContentStore(tmp_path / "store")
    got = {m.path: m for m in members(read_deb(build_deb(tmp_path, PKG)), content)}
    assert got["/"].entry is not None and got["/"].entry.type == "dir"
    lib = got["/usr/lib/x86_64-linux-gnu/libfoo.so.1"].entry
    assert lib is not None and lib.type == "file" and lib.uid == 0 and content.read(lib) == b"lib"
    link = got["/usr/lib/x86_64-linux-gnu/libfoo.so"].entry
    assert link is not None and link.type == "symlink" and link.target == "libfoo.so.1"
    assert got["/etc/foo.conf"].md5 == hashlib.md5(b"conf").hexdigest()


@needs_dpkg_deb
def test_hard_links_name_their_first_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN/control").write_text(PKG.control())
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/a").write_bytes(b"same")
    os.link(src / "usr/bin/a", src / "usr/bin/b")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(src), str(tmp_path / "h.deb")], check=True,
                   capture_output=True)
    got = {m.path: m for m in members(read_deb(tmp_path / "h.deb"), ContentStore(tmp_path / "store"))}
    first, second = sorted(["/usr/bin/a", "/usr/bin/b"], key=lambda p: got[p].entry is None)
    assert got[second].entry is None and got[second].link_to == first


def test_member_path_escapes(tmp_path: Path) -> None:
    assert member_path("./usr/bin/a", tmp_path) == "/usr/bin/a" and member_path("./", tmp_path) == "/"
    with pytest.raises(PatchError, match="leaves the tree"):
        member_path("./usr/../../etc/shadow", tmp_path)


def test_not_a_deb(tmp_path: Path) -> None:
    bad = tmp_path / "bad.deb"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    bad.write_bytes(buf.getvalue())
    with pytest.raises(PatchError, match="not a readable"):
        read_deb(bad)
    with pytest.raises(PatchError, match="not a readable"):
        read_deb(tmp_path / "missing.deb")


@given(st.lists(st.sampled_from(["a", "b.c", ".", "..", "", "é", "x y"]), max_size=8))
def test_member_paths_are_normal_or_refused(parts: list[str]) -> None:
    name = "./" + "/".join(parts)
    try:
        path = member_path(name, Path("x.deb"))
    except PatchError:
        assert ".." in parts
        return
    assert path.startswith("/") and ".." not in path.split("/") and "//" not in path
    assert path == "/" or (not path.endswith("/") and posixpath.normpath(path) == path)
