from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
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


def _qemu_io(path: Path, *commands: str) -> str:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        argv += ["-c", c]
    return subprocess.run([*argv, str(path)], check=True, capture_output=True, text=True).stdout


def test_a_thin_pool_holds_a_sparse_master_larger_than_itself_and_clones_it_at_once(tmp_path: Path) -> None:
    TiB = 1 << 40
    thick = Pool(tmp_path / "thick", capacity_bytes=100 * MiB)
    with pytest.raises(VolumeError, match="do not fit"):
        thick.create("big", TiB)
    pool = Pool(tmp_path / "pool", capacity_bytes=100 * MiB, thin=True)
    pool.create("big", TiB)
    _qemu_io(pool.path("big"), "write -P 0x11 1023G 1M")  # data at the far end
    clone = pool.create("c1", None, backing="big")  # size: the master's
    assert clone.size_bytes == TiB and clone.allocated_bytes < MiB
    assert pool.create("c2", None, backing="c1").backing == "c1.qcow2"  # a clone of a clone
    _qemu_io(pool.path("c2"), "write -P 0x22 0 1M")
    out = _qemu_io(pool.path("c2"), "read -P 0x11 1023G 1M", "read -P 0x22 0 1M")
    assert out.count("read 1048576/1048576") == 2 and "verification failed" not in out
    assert "verification failed" not in _qemu_io(pool.path("big"), "read -P 0 0 1M")  # the master is untouched
    assert pool.free_bytes() > 90 * MiB  # thin: only what is on disk counts


def test_offline_snapshots_are_listed_and_not_taken_twice(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool")
    pool.create("a", 4 * MiB)
    _qemu_io(pool.path("a"), "write -P 0x33 0 1M")
    assert pool.snapshot("a", "s1").snapshots == ("s1",)
    with pytest.raises(VolumeError, match="already has a snapshot s1"):
        pool.snapshot("a", "s1")
    with pytest.raises(VolumeError, match="volume name"):
        pool.snapshot("a", "../x")
    assert pool.info("a").snapshots == ("s1",)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 1 << 50))
def test_the_header_size_is_qemu_img_s(size: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="volhdr") as d:
        pool = Pool(Path(d), thin=True)
        v = pool.create("v", size)
        assert pool._virtual_size(pool.path("v")) == v.size_bytes  # qemu-img info is the oracle


def test_a_volume_deleted_while_listing_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool(tmp_path)
    for name in ("a", "b"):
        pool.create(name, 1 << 20)
    real = Pool.info

    def racing(self: Pool, name: str) -> object:
        if name == "a":  # the converger deletes it between the glob and the read
            (tmp_path / "a.qcow2").unlink()
        return real(self, name)

    monkeypatch.setattr(Pool, "info", racing)
    assert [v.name for v in pool.volumes()] == ["b"]

