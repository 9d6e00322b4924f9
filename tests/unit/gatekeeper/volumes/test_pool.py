from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.volumes.pool import Pool, VolumeError, check_name

MiB = 1 << 20


def test_create_list_clone_delete(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool", capacity_bytes=100 * MiB)
    v = pool.create("master", 16 * MiB)
    assert (v.size_bytes, v.backing) == (16 * MiB, None)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", str(pool.path("master"))],
                   check=True, capture_output=True)
    clone = pool.create("clone", 16 * MiB, backing="master")
    assert clone.backing == "master.qcow2"
    # the clone reads the master's data through its backing chain (qemu-io is the oracle)
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 1M", str(pool.path("clone"))],
                         check=True, capture_output=True, text=True).stdout
    assert "read 1048576/1048576" in out
    assert [x.name for x in pool.volumes()] == ["clone", "master"]
    assert pool.info("master").allocated_bytes > pool.info("clone").allocated_bytes
    with pytest.raises(VolumeError, match="backing file of clone"):
        pool.delete("master")
    pool.delete("clone")
    pool.delete("master")
    assert pool.volumes() == []


def test_capacity_and_free(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool", capacity_bytes=100 * MiB)
    assert pool.capacity_bytes() == 100 * MiB
    assert pool.free_bytes() == 100 * MiB
    pool.create("a", 60 * MiB)
    assert pool.free_bytes() == 40 * MiB
    with pytest.raises(VolumeError, match="do not fit"):
        pool.create("b", 41 * MiB)
    assert not pool.exists("b")


def test_refusals_leave_the_pool_untouched(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool")
    pool.create("a", MiB)
    before = sorted(p.name for p in pool.directory.iterdir())
    for call, match in ((lambda: pool.create("a", MiB), "already exists"),
                        (lambda: pool.create("b", 0), "size_bytes"),
                        (lambda: pool.create("c", MiB, backing="nope"), "backing volume nope"),
                        (lambda: pool.delete("nope"), "no volume nope"),
                        (lambda: pool.create("../x", MiB), "volume name")):
        with pytest.raises(VolumeError, match=match):
            call()
    assert sorted(p.name for p in pool.directory.iterdir()) == before


@given(st.text(max_size=70))
def test_check_name_never_lets_a_path_through(name: str) -> None:
    try:
        ok = check_name(name)
    except VolumeError:
        return
    assert "/" not in ok and ".." not in ok and not ok.startswith(".")
