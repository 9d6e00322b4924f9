"""`softudc image materialize|boot` through the real parser."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from softudc.cli.errors import CliError
from softudc.cli.imagedisk import parse_size
from softudc.images.manifest import Entry
from softudc.images.store import ImageStore
from tests.unit.cli.imagecli import run


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = ImageStore.open(tmp_path / "images")
    tree = [Entry("/", "dir", 0o755), Entry("/etc", "dir", 0o755),
            store.content.entry_for_file("/etc/hostname", io.BytesIO(b"web\n"), mode=0o644, uid=0, gid=0)]
    store.commit(tree, name="web", how="test")
    store.close()
    return tmp_path / "images"


def test_materialize_prints_the_cached_path(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(root, capsys, "materialize", "web")
    path = Path(out.strip())
    assert code == 0 and path.parent == root / "disks" and path.is_file() and "materialize:" in err
    code, again, err = run(root, capsys, "materialize", "web:1")
    assert again == out and "cached" in err


def test_materialize_copies_out_raw_and_qcow2(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, qcow = tmp_path / "web.img", tmp_path / "web.qcow2"
    assert run(root, capsys, "materialize", "web", "-o", str(raw))[1].strip() == str(raw)
    run(root, capsys, "materialize", "web", "-o", str(qcow), "--size", "80M")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(qcow)], capture_output=True,
                                     check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 80 << 20
    assert raw.stat().st_size > 0 and raw.stat().st_blocks * 512 < raw.stat().st_size  # sparse copy


def test_errors_are_one_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(root, capsys, "materialize", "nope")
    assert code == 1 and "nope" in err
    code, _, err = run(root, capsys, "materialize", "web", "--size", "1M")
    assert code == 1 and "needs at least" in err
    code, _, err = run(root, capsys, "boot", "web", "--check", "relative/path")
    assert code == 1 and "absolute paths" in err


def test_parse_size() -> None:
    assert parse_size("4G") == 4 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("100") == 100
    with pytest.raises(CliError, match="bad --size"):
        parse_size("lots")


def test_disks_lists_and_prunes(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    disk = Path(run(root, capsys, "materialize", "web")[1].strip())
    code, out, _ = run(root, capsys, "disks")
    assert code == 0 and "web:1,web:latest" in out and str(disk) in out
    assert run(root, capsys, "disks", "--prune")[1] == "" and disk.exists()
    run(root, capsys, "rm", "web")
    code, out, err = run(root, capsys, "disks", "--prune", "--dry-run")
    assert out.startswith(f"would remove {disk}") and disk.exists()
    code, out, err = run(root, capsys, "disks", "--prune")
    assert out.startswith(f"removed {disk}") and not disk.exists() and "removed 1 cached disks" in err
