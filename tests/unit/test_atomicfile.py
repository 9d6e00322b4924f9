"""The one way state and secret files are written (audit R22): all or nothing, private from the
first byte, durable, and never a key replaced by accident."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from softudc.atomicfile import create_exclusive, move_aside, private_dir, write_atomic


def test_r22_write_atomic_replaces_whole_private_and_syncs_file_and_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)  # the os module atomicfile calls
    path = tmp_path / "state.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert synced == ["file", "dir"]
    assert os.listdir(tmp_path) == ["state.json"]


def test_r22_a_failed_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{}")

    def disk_full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, b'{"a": 1}')
    assert path.read_text() == "{}" and os.listdir(tmp_path) == ["tokens.json"]


def test_r22_create_exclusive_never_replaces_and_is_0600_from_the_start(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask gives no one else a look
    try:
        create_exclusive(tmp_path / "server.key", b"secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_exclusive(tmp_path / "server.key", b"other")
    assert (tmp_path / "server.key").read_bytes() == b"secret"


def test_r22_private_dir_and_move_aside(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    assert stat.S_IMODE(private_dir(d).stat().st_mode) == 0o700
    (d / "state.json").write_text("{trunc")
    aside = move_aside(d / "state.json")
    assert aside.name.startswith("state.json.corrupt-") and aside.read_text() == "{trunc"
    assert not (d / "state.json").exists()
