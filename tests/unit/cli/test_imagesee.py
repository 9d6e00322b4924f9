"""`softudc image inspect|diff|search|patch` through the real parser, on Debian-like trees and
dpkg-deb-built packages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from softudc.images.importtree import import_tree
from softudc.images.store import ImageStore
from tests.unit.cli.imagecli import run
from tests.unit.images.debtrees import Pkg, build_deb, debian_tree

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

OLD = Pkg("openssl", "3.0.11-1~deb12u2", {"/usr/bin/openssl": b"old", "/usr/share/doc/openssl/x": b"x"},
          postinst="#!/bin/sh\n")
NEW = Pkg("openssl", "3.0.15-1~deb12u1", {"/usr/bin/openssl": b"new"}, postinst="#!/bin/sh\n")
DPKG = Pkg("dpkg", "1.21.22", {"/usr/bin/dpkg": b"dpkg"})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = ImageStore.open(tmp_path / "store")
    import_tree(store, debian_tree(tmp_path / "web", [DPKG, OLD]), name="web")
    import_tree(store, debian_tree(tmp_path / "base", [DPKG]), name="base")
    store.close()
    return tmp_path / "store"


def test_inspect(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(root, capsys, "inspect", "web")
    assert code == 0
    assert "Debian GNU/Linux 12 (bookworm)" in out and "6.1.0-9-amd64" in out and "packages:     2" in out
    assert any(line.split()[:2] == ["openssl", "3.0.11-1~deb12u2"] for line in out.splitlines())
    code, out, _ = run(root, capsys, "inspect", "web", "-o", "json")
    assert [p["name"] for p in json.loads(out)["packages"]] == ["dpkg", "openssl"]
    code, _, err = run(root, capsys, "inspect", "nope")
    assert code == 1 and "no image nope" in err


def test_diff(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(root, capsys, "diff", "base", "web")
    assert code == 0
    assert "+ package openssl 3.0.11-1~deb12u2" in out and "+ /usr/bin/openssl (file)" in out
    assert "~ /var/lib/dpkg/status (content)" in out
    code, out, _ = run(root, capsys, "diff", "base", "web", "-o", "json")
    assert json.loads(out)["packages"]["added"] == [{"name": "openssl", "version": "3.0.11-1~deb12u2"}]


def test_search(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(root, capsys, "search", "--package", "openssl<3.0.15")
    assert code == 0 and out.splitlines()[1].startswith("web:1,web:latest") and "openssl 3.0.11" in out
    code, out, _ = run(root, capsys, "search", "--file", "/usr/bin/*", "-o", "json")
    assert {(h["tags"][0], h["match"]["path"]) for h in json.loads(out)} == \
        {("web:1", "/usr/bin/openssl"), ("web:1", "/usr/bin/dpkg"), ("base:1", "/usr/bin/dpkg")}
    code, _, err = run(root, capsys, "search", "--package", "openssl!3")
    assert code == 1 and "package spec" in err
    code, _, err = run(root, capsys, "search", "--package", "nginx")
    assert code == 0 and "no tagged image matches" in err


def test_patch_one_and_all(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deb = build_deb(tmp_path, NEW)
    code, out, err = run(root, capsys, "patch", "web", "--deb", str(deb))
    assert code == 0, err
    assert out.startswith("web:2, web:latest -> sha256:") and "maintainer scripts not run" in out
    assert "warning: openssl" in err
    code, out, _ = run(root, capsys, "search", "--package", "openssl<3.0.15")
    assert out.splitlines()[1].startswith("web:1 ")
    code, out, err = run(root, capsys, "patch", "--all-images-with", "openssl", "--deb", str(deb))
    assert code == 0 and "web:latest: skipped (" in out and "already has" in out
    code, _, err = run(root, capsys, "patch", "base", "--deb", str(deb))
    assert code == 1 and "does not have openssl installed" in err
    code, _, err = run(root, capsys, "patch", "web", "--all-images-with", "openssl", "--deb", str(deb))
    assert code == 1 and "not both" in err
    code, _, err = run(root, capsys, "patch", "web", "--deb", str(tmp_path / "missing.deb"))
    assert code == 1 and "no such .deb" in err


def test_patch_install_and_force_depends(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deb = build_deb(tmp_path, Pkg("extra", "1", {"/usr/bin/extra": b"x"}, relations="Depends: missing\n"))
    code, _, err = run(root, capsys, "patch", "base", "--deb", str(deb))
    assert code == 1 and "--install" in err
    code, _, err = run(root, capsys, "patch", "base", "--install", "--deb", str(deb))
    assert code == 1 and "extra 1 depends on missing" in err and "--force-depends" in err
    code, out, err = run(root, capsys, "patch", "base", "--install", "--force-depends", "--deb", str(deb))
    assert code == 0 and "extra (not installed) -> 1" in out
