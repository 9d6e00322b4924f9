"""`softudc image list|tag|rm|history|manifest|gc|verify` through the real parser."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

from softudc.images.manifest import Entry, parse_manifest
from softudc.images.store import ImageStore
from tests.unit.cli.imagecli import run


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = ImageStore.open(tmp_path)
    files = [("/etc/os-release", b"ID=debian\n"), ("/bin/sh", b"#!" * 900)]
    tree = [Entry("/", "dir", 0o755)] + [
        store.content.entry_for_file(p, io.BytesIO(d), mode=0o755, uid=0, gid=0) for p, d in files]
    store.commit(tree, name="web", how="import tree /srv/web")
    tree.append(store.content.entry_for_file("/etc/motd", io.BytesIO(b"hi"), mode=0o644, uid=0, gid=0))
    store.commit(tree, name="web", parents=["web"], how="patch motd")
    store.close()
    return tmp_path


def age(root: Path) -> None:
    for path in (root / "objects").glob("*/*.zst"):
        t = path.stat().st_mtime - 3600
        os.utime(path, (t, t))


def test_list_table_and_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(root, capsys, "list")
    assert code == 0 and re.search(r"tagged versions hold 3.5 KiB; the store keeps \d+ B in 5 objects", err)
    lines = out.splitlines()
    assert lines[0].split() == ["TAGS", "DIGEST", "CREATED", "ENTRIES", "SIZE", "HOW"]
    assert lines[1].startswith("web:2,web:latest") and lines[1].endswith("patch motd")
    code, out, _ = run(root, capsys, "list", "-o", "json")
    rows = json.loads(out)
    assert [r["tags"] for r in rows] == [["web:2", "web:latest"], ["web:1"]]
    assert rows[0]["parents"] == [rows[1]["digest"]] and rows[0]["entries"] == 4 and rows[0]["size"] == 1812


def test_tag_rm_history_manifest(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, capsys, "tag", "web:1", "base:v1")[1].startswith("base:v1 -> sha256:")
    code, out, _ = run(root, capsys, "history", "web")
    assert code == 0 and "patch motd" in out.splitlines()[0] and "(base:v1, web:1)" in out
    assert "import tree /srv/web" in out.splitlines()[1]
    code, out, _ = run(root, capsys, "manifest", "base:v1")
    assert [e.path for e in parse_manifest(out.encode())] == ["/", "/bin/sh", "/etc/os-release"]
    assert "untagged web:1, web:2, web:latest" in run(root, capsys, "rm", "web")[1]
    code, _, err = run(root, capsys, "history", "web")
    assert code == 1 and "softudc: no image web:latest: no image web; images: base" in err


def test_gc_dry_run_then_real(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(root, capsys, "rm", "web:2")
    run(root, capsys, "rm", "web:latest")
    age(root)
    before = sorted((root / "objects").glob("*/*.zst"))
    with ImageStore.open(root) as store:
        web2 = store.versions()[-1].digest
    code, out, err = run(root, capsys, "gc", "--dry-run", "--keep", web2[:20], "-o", "json")
    assert code == 0 and json.loads(out)["swept_objects"] == 0
    code, out, err = run(root, capsys, "gc", "--dry-run", "-o", "json")
    assert code == 0 and json.loads(out)["swept_objects"] == 2 and "gc: would remove 2 objects" in err
    assert sorted((root / "objects").glob("*/*.zst")) == before
    code, out, _ = run(root, capsys, "gc")
    assert out.startswith("removed 2 objects")
    assert len(list((root / "objects").glob("*/*.zst"))) == len(before) - 2
    code, _, err = run(root, capsys, "manifest", "web:2")
    assert code == 1 and "no image web:2" in err


def test_verify_names_images_and_paths(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, capsys, "verify")[1].startswith("ok: ")
    store = ImageStore.open(root)
    sh = next(e for e in store.manifest("web:1") if e.path == "/bin/sh")
    store.content.path_of(sh.digest).write_bytes(b"rotten")
    code, out, err = run(root, capsys, "verify")
    assert code == 1
    assert out.splitlines()[0].startswith(f"object {sh.digest} is corrupt ({root}/objects/")
    assert "  web:1: /bin/sh" in out and "  web:2, web:latest: /bin/sh" in out
    assert "softudc: 1 bad objects: run `softudc image verify --move-aside`, then re-import or rebuild web:1" in err
    code, out, _ = run(root, capsys, "verify", "--move-aside", "-o", "json")
    assert code == 1 and json.loads(out)["problems"][0]["moved_to"].startswith(str(root / "corrupt"))


def test_bad_names_are_cli_errors(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(root, capsys, "tag", "web", "no/pe")
    assert code == 1 and "bad image name 'no/pe'" in err
