"""A volume made as a copy of its VM's image: real qemu-img copies, qemu-io reads what they hold."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.volumes import from_image
from gatekeeper.volumes import pool as pool_module
from gatekeeper.volumes.pool import Pool, VolumeError

MiB = 1 << 20


def qemu_io(fmt: str, path: Path, command: str) -> str:
    return subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], check=True, capture_output=True,
                          text=True).stdout


def raw_image(pool: Pool, name: str, size: int) -> Path:
    """A raw image (as `softudc image materialize -o X.img` writes) with 0xab in its first and last MiB."""
    images = pool.directory / from_image.IMAGES_DIR
    images.mkdir(exist_ok=True)
    path = images / f"{name}.img"
    with open(path, "wb") as f:
        f.truncate(size)
    qemu_io("raw", path, "write -P 0xab 0 1M")
    qemu_io("raw", path, f"write -P 0xab {size - MiB} 1M")
    return path


def test_a_raw_image_is_copied_into_the_volume_and_grown_to_its_size(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool", capacity_bytes=100 * MiB)
    raw_image(pool, "test-guest", 4 * MiB)
    v = from_image.create(pool, "f--a-0--root", 16 * MiB, "test-guest")
    assert (v.size_bytes, v.backing) == (16 * MiB, None)  # its own file: no backing outside the pool
    path = pool.path("f--a-0--root")
    assert "read 1048576/1048576" in qemu_io("qcow2", path, "read -P 0xab 0 1M")
    assert "read 1048576/1048576" in qemu_io("qcow2", path, f"read -P 0xab {3 * MiB} 1M")
    assert "read 12582912/12582912" in qemu_io("qcow2", path, f"read -P 0 {4 * MiB} 12M")  # the grown part
    assert v.allocated_bytes < 8 * MiB  # sparse: the zeros in between are not copied
    assert [x.name for x in pool.volumes()] == ["f--a-0--root"]  # the images dir is not a volume
    with pytest.raises(VolumeError, match="already exists"):
        from_image.create(pool, "f--a-0--root", 16 * MiB, "test-guest")


def test_a_qcow2_image_of_the_same_size_is_copied_whole(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool")
    raw = raw_image(pool, "src", 4 * MiB)
    qcow = raw.with_name("web:2.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True)
    v = from_image.create(pool, "vol", 4 * MiB, "web:2")
    assert v.size_bytes == 4 * MiB
    assert "read 1048576/1048576" in qemu_io("qcow2", pool.path("vol"), f"read -P 0xab {3 * MiB} 1M")


def test_an_image_larger_than_the_volume_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool")
    raw_image(pool, "big", 8 * MiB + 4096)
    with pytest.raises(VolumeError, match=r"is 8392704 bytes, more than the volume's size 4194304; set the "
                                          r"volume's `size` in the farm descriptor \(vms\[\]\.volumes\[\]\.size\) "
                                          r"to at least 9Mi"):
        from_image.create(pool, "vol", 4 * MiB, "big")
    assert sorted(p.name for p in pool.directory.iterdir()) == ["images"]


def test_a_missing_image_or_a_full_pool_says_what_to_do(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool", capacity_bytes=8 * MiB)
    with pytest.raises(VolumeError, match=r"image web is not on this storage host: put it in .*/pool/images as "
                                          r"web\.qcow2 or web\.img"):
        from_image.create(pool, "vol", 4 * MiB, "web")
    raw_image(pool, "web", 2 * MiB)
    with pytest.raises(VolumeError, match="do not fit; the pool has"):
        from_image.create(pool, "vol", 16 * MiB, "web")
    assert sorted(p.name for p in pool.directory.iterdir()) == ["images"]


def test_a_half_made_copy_never_carries_the_volume_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool(tmp_path / "pool")
    raw_image(pool, "web", 2 * MiB)
    real = pool_module._qemu_img

    def resize_fails(*args: str) -> str:
        if args[0] == "resize":
            raise VolumeError("qemu-img resize: No space left on device")
        return real(*args)

    monkeypatch.setattr(from_image, "_qemu_img", resize_fails)
    with pytest.raises(VolumeError, match="No space left"):
        from_image.create(pool, "vol", 4 * MiB, "web")
    assert sorted(p.name for p in pool.directory.iterdir()) == ["images"]  # neither vol.qcow2 nor the temp file


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=1, max_size=40) | st.sampled_from(["..", "../x", "a/../../b", ".hidden", "web:2", "a..b"]))
def test_image_names_never_leave_the_images_directory(name: str) -> None:
    pool = Pool.__new__(Pool)  # no directory made: every accepted name is looked up and not found
    pool.directory = Path("/nonexistent-softudc-pool")
    with pytest.raises(VolumeError) as e:
        from_image.image_file(pool, name)
    if "is not on this storage host" in str(e.value):  # the name was accepted as a file name
        images = pool.directory / from_image.IMAGES_DIR
        assert (images / f"{name}.img").parent == images and ".." not in name and not name.startswith(".")
    else:
        assert str(e.value).startswith(f"image name {name!r}")
