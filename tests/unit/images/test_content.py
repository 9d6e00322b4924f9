from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc import atomicfile
from softudc.images import content as content_mod
from softudc.images.content import CHUNK_OVER, ContentStore, IntegrityError, MissingObjectError
from softudc.images.manifest import digest_of


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_put_stores_once_compressed(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    d = cs.put(b"hello" * 1000)
    assert d == digest_of(b"hello" * 1000)
    path = cs.path_of(d)
    assert path == tmp_path / "objects" / d[7:9] / f"{d[7:]}.zst"
    assert path.stat().st_size < 100
    ino = path.stat().st_ino
    assert cs.put(b"hello" * 1000) == d
    assert path.stat().st_ino == ino  # not rewritten
    assert [x for x, _ in cs.objects()] == [d]
    assert cs.get(d) == b"hello" * 1000
    assert not list(path.parent.glob(".*"))  # no temporary file left


def test_put_of_existing_object_freshens_it(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    d = cs.put(b"x")
    os.utime(cs.path_of(d), (1000, 1000))
    cs.put(b"x")
    assert cs.path_of(d).stat().st_mtime > 1000


def test_small_file_is_one_object(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    e = cs.entry_for_file("/f", src, mode=0o100644, uid=1, gid=2)
    assert (e.digest, e.size, e.chunks, e.mode) == (digest_of(b"abc"), 3, (), 0o644)
    assert cs.read(e) == b"abc"
    empty = cs.entry_for_file("/e", io.BytesIO(b""), mode=0o600, uid=0, gid=0)
    assert empty.digest == digest_of(b"") and cs.read(empty) == b""


def test_big_file_is_chunked_and_a_small_change_restores_few_chunks(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    data = blob(3 * CHUNK_OVER + 12345)
    digest, size, chunks = cs.put_file(io.BytesIO(data))
    assert (digest, size) == (digest_of(data), len(data))
    assert len(chunks) > 10
    before = {d for d, _ in cs.objects()}
    changed = data[:2 * CHUNK_OVER] + b"PATCH" + data[2 * CHUNK_OVER + 5:]
    _, _, chunks2 = cs.put_file(io.BytesIO(changed))
    new = {d for d, _ in cs.objects()} - before
    assert 1 <= len(new) <= 3
    assert len(set(chunks) & set(chunks2)) >= len(chunks) - 3


def test_windowed_chunking_equals_whole_file_chunking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = blob(2 * CHUNK_OVER + 999, seed=7)
    whole = ContentStore(tmp_path / "a").put_file(io.BytesIO(data))
    monkeypatch.setattr(content_mod, "WINDOW", 300 << 10)  # many windows, each cut again at its end
    windowed = ContentStore(tmp_path / "b").put_file(io.BytesIO(data))
    assert whole == windowed


def test_stream_and_write_to(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path / "s")
    data = blob(CHUNK_OVER + 1)
    e = cs.entry_for_file("/big", io.BytesIO(data), mode=0o644, uid=0, gid=0)
    assert b"".join(cs.stream(e)) == data
    cs.write_to(e, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    with pytest.raises(FileExistsError):
        cs.write_to(e, tmp_path / "out")


def test_corrupt_and_missing_objects(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    d = cs.put(b"one")
    other = cs.put(b"two")
    os.replace(cs.path_of(other), cs.path_of(d))  # valid zstd, wrong content
    with pytest.raises(IntegrityError, match=f"object {d} is corrupt"):
        cs.get(d)
    cs.path_of(d).write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match="cannot decompress"):
        cs.get(d)
    with pytest.raises(MissingObjectError, match=f"object {other} is missing"):
        cs.get(other)


def test_write_to_removes_the_file_when_content_is_corrupt(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path / "s")
    e = cs.entry_for_file("/f", io.BytesIO(b"data"), mode=0o644, uid=0, gid=0)
    cs.path_of(e.digest).write_bytes(b"junk")
    with pytest.raises(IntegrityError):
        cs.write_to(e, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_object_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an object name"):
        ContentStore(tmp_path).get("md5:00")


@settings(max_examples=25, deadline=None)
@given(size=st.integers(CHUNK_OVER - 2, 2 * CHUNK_OVER + 70_000), seed=st.integers(0, 2**16),
       read_size=st.sampled_from([1 << 12, 1 << 16, 1 << 20]))
def test_any_file_comes_back_whole(tmp_path_factory: pytest.TempPathFactory, size: int, seed: int,
                                   read_size: int) -> None:
    cs = ContentStore(tmp_path_factory.mktemp("cs"))
    data = blob(size, seed)

    class Trickle(io.BytesIO):  # a pipe: short reads
        def read(self, n: int | None = -1) -> bytes:
            return super().read(min(read_size, n) if n is not None and n >= 0 else read_size)

    e = cs.entry_for_file("/f", Trickle(data), mode=0o644, uid=0, gid=0)
    assert (e.size, e.digest) == (size, digest_of(data))
    assert bool(e.chunks) == (size > CHUNK_OVER)
    assert cs.read(e) == data


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cs = ContentStore(tmp_path)
    cs.put(b"first")  # the directory and lease exist

    def full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicfile, "_write_all", full)  # content objects are written by atomicfile
    with pytest.raises(OSError, match="No space"):
        cs.put(b"second")
    monkeypatch.undo()
    assert not cs.has(digest_of(b"second"))
    assert [p.name for p in (tmp_path / "objects").rglob("*") if p.is_file()] == [
        cs.path_of(digest_of(b"first")).name]


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path / "s")
    with pytest.raises(ValueError, match="/dev/zero is not a regular file"):
        cs.put_file(Path("/dev/zero"))


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        ContentStore(tmp_path / "s").put_file(tmp_path / "fifo")
