from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.volumes.daemon import DaemonError, StorageDaemon
from softudc.pids import pid_alive


def test_start_adopt_stop(tmp_path: Path) -> None:
    d = StorageDaemon(tmp_path / "qsd")
    assert not d.adopt() and d.pid() is None
    pid = d.start()
    try:
        assert pid_alive(pid)
        again = StorageDaemon(tmp_path / "qsd")  # a restarted gatekeeper: same dir, new object
        assert again.adopt()
        assert again.start() == pid  # adopted, not a second daemon
    finally:
        d.stop()
    assert not pid_alive(pid)
    assert not d.qmp_path.exists() and d.pid() is None
    d.stop()  # idempotent


def test_stale_pidfile_is_not_adopted(tmp_path: Path) -> None:
    d = StorageDaemon(tmp_path / "qsd")
    d.run_dir.mkdir()
    d.pid_path.write_text("999999999\n")
    assert not d.adopt()
    pid = d.start()
    try:
        assert pid != 999999999 and pid_alive(pid)
    finally:
        d.stop()


def test_a_run_directory_too_long_for_a_socket_is_refused_saying_so(tmp_path: Path) -> None:
    d = StorageDaemon(tmp_path / ("r" * 120))
    with pytest.raises(DaemonError, match="a Unix socket's path may have; configure a shorter run directory"):
        d.start()
    assert not d.run_dir.exists()  # nothing made, nothing started
