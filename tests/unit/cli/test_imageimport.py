"""`softudc image import|build` through argparse: the parsers this part adds, run on a temp store."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import pytest

from softudc.cli import imageimport
from softudc.cli.errors import CliError
from softudc.images.store import ImageStore


def parse(argv: list[str], store: Path) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--images")
    imageimport.add_subcommands(p.add_subparsers(dest="sub", required=True))
    return p.parse_args(["--images", str(store), *argv])


def run(argv: list[str], store: Path) -> None:
    a = parse(argv, store)
    a.fn(a)


def test_import_tree_prints_the_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "t"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("web\n")
    run(["import", "web", "--tree", str(tree)], tmp_path / "s")
    out, err = capsys.readouterr()
    digest = ImageStore.open(tmp_path / "s").resolve("web:1").digest
    assert out.startswith(f"web:1 {digest}\n") and "3 entries, 4 bytes" in out and "new bytes stored" in out
    assert "committing" in err
    run(["import", "web", "--tree", str(tree), "-o", "json"], tmp_path / "s")
    doc = json.loads(capsys.readouterr().out)
    assert (doc["tag"], doc["digest"], doc["entries"], doc["new_bytes_stored"]) == ("web:2", digest, 3, 0)


def test_import_tar_file_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    for path, name in ((good, "etc/x"), (bad, "../x")):
        with tarfile.open(path, "w") as t:
            info = tarfile.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    run(["import", "t", "--tar", str(good)], tmp_path / "s")
    assert capsys.readouterr().out.startswith("t:1 sha256:")
    with pytest.raises(CliError, match=r"bad\.tar: member '\.\./x'.*'\.\.'"):
        run(["import", "t", "--tar", str(bad)], tmp_path / "s")
    with pytest.raises(CliError, match="cannot read the tar"):
        run(["import", "t", "--tar", str(tmp_path / "missing.tar")], tmp_path / "s")
    assert ImageStore.open(tmp_path / "s").resolve("t").digest == ImageStore.open(tmp_path / "s").resolve("t:1").digest


def test_import_needs_one_source(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse(["import", "t"], tmp_path)
    with pytest.raises(SystemExit):
        parse(["import", "t", "--tree", "a", "--disk", "b"], tmp_path)
    with pytest.raises(CliError, match="--partition goes with --disk"):
        run(["import", "t", "--tree", str(tmp_path), "--partition", "2"], tmp_path / "s")
    with pytest.raises(CliError, match="not a directory"):
        run(["import", "t", "--tree", str(tmp_path / "nope")], tmp_path / "s")


def test_import_disk_refusal(tmp_path: Path) -> None:
    (tmp_path / "junk.img").write_bytes(bytes(1 << 16))
    with pytest.raises(CliError, match=r"junk\.img"):
        run(["import", "t", "--disk", str(tmp_path / "junk.img")], tmp_path / "s")
    with pytest.raises(CliError, match=r"junk\.img: partition 2 holds no ext2/3/4"):
        run(["import", "t", "--disk", str(tmp_path / "junk.img"), "--partition", "2"], tmp_path / "s")


def test_build_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_build(store: ImageStore, name: str, **kw: object) -> object:
        seen.update(kw, name=name)
        return ImageStore.open(tmp_path / "s").commit([], name=name, how="build fake")

    monkeypatch.setattr("softudc.images.build.build_debian", fake_build)
    with pytest.raises(SystemExit):
        parse(["build", "deb"], tmp_path)  # --debootstrap is required
    run(["build", "deb", "--debootstrap", "trixie", "--packages", "nginx, curl,", "--cache", str(tmp_path / "c")],
        tmp_path / "s")
    assert seen["name"] == "deb" and seen["suite"] == "trixie" and seen["packages"] == ("nginx", "curl")
    assert seen["variant"] == "minbase" and seen["cache_dir"] == tmp_path / "c"
