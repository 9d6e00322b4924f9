from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from softudc.images.content import CHUNK_OVER
from softudc.images.manifest import Entry
from softudc.images.store import ImageError, ImageStore
from softudc.images.verify import MANIFEST, verify

BIG = bytes(range(256)) * (CHUNK_OVER // 256) + os.urandom(CHUNK_OVER)


def tree(store: ImageStore, *files: tuple[str, bytes]) -> list[Entry]:
    return [Entry("/", "dir", 0o755)] + [
        store.content.entry_for_file(p, io.BytesIO(d), mode=0o644, uid=0, gid=0) for p, d in files]


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore.open(tmp_path)
    s.commit(tree(s, ("/lib/libc.so", b"libc"), ("/a", b"a")), name="web", how="t")
    s.commit(tree(s, ("/usr/lib/libc.so", b"libc"), ("/big", BIG)), name="db", how="t")
    return s


def corrupt(store: ImageStore, digest: str) -> None:
    path = store.content.path_of(digest)
    other = store.content.path_of(store.content.put(b"something else"))
    path.write_bytes(other.read_bytes())


def test_a_clean_store(store: ImageStore) -> None:
    report = verify(store)
    assert report.ok and report.versions == 2
    assert report.objects == len(list(store.content.objects()))


def test_corrupt_object_names_every_image_and_path(store: ImageStore) -> None:
    libc = next(e.digest for e in store.manifest("web") if e.path == "/lib/libc.so")
    corrupt(store, libc)
    messages: list[str] = []
    report = verify(store, progress=messages.append)
    assert not report.ok and len(report.problems) == 1
    problem = report.problems[0]
    assert (problem.digest, problem.kind) == (libc, "corrupt")
    assert sorted(problem.users) == [("db:1, db:latest", "/usr/lib/libc.so"), ("web:1, web:latest", "/lib/libc.so")]
    assert report.images() == ["db:1", "db:latest", "web:1", "web:latest"]
    assert "1 problems" in messages[-1]
    only_web = verify(store, ["web:1"])
    assert [p.users for p in only_web.problems] == [[("web:1, web:latest", "/lib/libc.so")]]


def test_missing_chunk_and_manifest(store: ImageStore) -> None:
    big = next(e for e in store.manifest("db") if e.path == "/big")
    assert len(big.chunks) > 2
    store.content.path_of(big.chunks[1]).unlink()
    web = store.resolve("web").digest
    store.content.path_of(web).unlink()
    report = verify(store)
    assert {(p.digest, p.kind) for p in report.problems} == {(big.chunks[1], "missing"), (web, "missing")}
    users = {p.digest: p.users for p in report.problems}
    assert users[big.chunks[1]] == [("db:1, db:latest", "/big")]
    assert users[web] == [("web:1, web:latest", MANIFEST)]


def test_move_aside_lets_a_reimport_store_a_good_copy(store: ImageStore) -> None:
    libc = next(e.digest for e in store.manifest("web") if e.path == "/lib/libc.so")
    corrupt(store, libc)
    report = verify(store, move_aside=True)
    assert Path(report.problems[0].moved_to).parent == store.root / "corrupt"
    store.content.put(b"libc")  # what re-importing the image does
    assert verify(store).ok


def test_unknown_ref(store: ImageStore) -> None:
    with pytest.raises(ImageError, match="no image nope"):
        verify(store, ["nope"])
