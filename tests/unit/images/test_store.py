from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

import pytest

from softudc.images.manifest import Entry, ManifestError, manifest_digest
from softudc.images.store import ImageError, ImageStore


def tree(store: ImageStore, *files: tuple[str, bytes]) -> list[Entry]:
    out = [Entry("/", "dir", 0o755)]
    for path, data in files:
        out.append(store.content.entry_for_file(path, io.BytesIO(data), mode=0o644, uid=0, gid=0))
    return out


def test_commit_tags_and_resolves(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    t1 = tree(store, ("/a", b"A"))
    v1 = store.commit(t1, name="web", how="import tree X")
    assert v1.digest == manifest_digest(t1) and v1.parents == () and v1.how == "import tree X"
    t2 = tree(store, ("/a", b"A"), ("/b", b"B"))
    v2 = store.commit(t2, name="web", parents=["web:1"], how="patch")
    assert v2.parents == (v1.digest,)
    assert store.tags() == {"web:1": v1.digest, "web:2": v2.digest, "web:latest": v2.digest}
    assert store.resolve("web") == v2
    assert store.resolve("web:1") == v1
    assert store.resolve(v2.digest[:19]) == v2
    assert store.manifest("web:1") == t1
    assert store.stats(v2.digest) == (3, 2)
    assert [v.digest for v in store.history("web")] == [v2.digest, v1.digest]
    assert store.versions() == [v1, v2]


def test_shared_content_is_stored_once(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    shared = b"the same libc" * 100
    store.commit(tree(store, ("/lib/libc", shared), ("/x", b"1")), name="a", how="t")
    store.commit(tree(store, ("/usr/lib/libc", shared), ("/x", b"2")), name="b", how="t")
    digests = [d for d, _ in store.content.objects()]
    a, b = store.manifest("a"), store.manifest("b")
    libc = next(e.digest for e in a if e.path == "/lib/libc")
    assert libc == next(e.digest for e in b if e.path == "/usr/lib/libc")
    assert digests.count(libc) == 1
    assert len(digests) == 5  # libc, "1", "2", two manifests


def test_numbers_are_never_reused_and_tags_move(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    v1 = store.commit(tree(store, ("/a", b"1")), name="web", how="t")
    store.untag("web:1")
    store.untag("web:latest")
    v2 = store.commit(tree(store, ("/a", b"2")), name="web", how="t")
    assert store.tags() == {"web:2": v2.digest, "web:latest": v2.digest}
    store.tag(v1.digest, "web:prod")
    store.tag("web:prod", "old")
    assert store.resolve("old:latest") == v1
    store.untag("web")
    assert store.tags() == {"old:latest": v1.digest}


def test_same_tree_twice_is_one_version(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    v1 = store.commit(tree(store, ("/a", b"1")), name="x", how="first")
    v2 = store.commit(tree(store, ("/a", b"1")), name="y", how="second")
    assert v2 == v1 and len(store.versions()) == 1
    assert store.resolve("y:1") == v1


@pytest.mark.parametrize("ref, message", [
    ("nope", "no image nope:latest: no image nope; images: web"),
    ("web:9", "no image web:9: web has tags web:1, web:latest"),
    ("sha256:abc", "at least 12"),
    ("sha256:" + "0" * 12, "no version sha256:000000000000"),
    ("bad/name", "bad image name 'bad/name'"),
])
def test_resolve_errors_say_what_exists(tmp_path: Path, ref: str, message: str) -> None:
    store = ImageStore.open(tmp_path)
    store.commit(tree(store), name="web", how="t")
    with pytest.raises(ImageError, match=message):
        store.resolve(ref)


def test_bad_input_stores_nothing(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    with pytest.raises(ManifestError, match="field path"):
        store.commit([Entry("etc", "dir", 0o755)], name="web", how="t")
    ghost = Entry("/f", "file", 0o644, size=1, digest="sha256:" + "a" * 64)
    with pytest.raises(ImageError, match=r"entry /f: its content sha256:a+ is not in the store"):
        store.commit([ghost], name="web", how="t")
    with pytest.raises(ImageError, match="bad image name"):
        store.commit([], name="-x", how="t")
    with pytest.raises(ImageError, match="no image nope"):
        store.commit([], name="web", parents=["nope"], how="t")
    assert store.versions() == [] and store.tags() == {} and list(store.content.objects()) == []


def test_untag_unknown(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    with pytest.raises(ImageError, match="no tag 'web:3' to remove; the store holds no image yet"):
        store.untag("web:3")


def _commit_many(root: str, n: int, tag: str) -> None:
    store = ImageStore.open(Path(root))
    for i in range(n):
        store.commit(tree(store, ("/n", f"{tag}{i}".encode())), name="web", how=tag)


def test_concurrent_processes_number_without_collisions(tmp_path: Path) -> None:
    ImageStore.open(tmp_path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_commit_many, args=(str(tmp_path), 5, t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ImageStore.open(tmp_path)
    assert sorted(store.tags()) == sorted([f"web:{i}" for i in range(1, 11)] + ["web:latest"])
    assert len(store.versions()) == 10


def test_manifest_of_a_collected_version(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    v = store.commit(tree(store, ("/a", b"1")), name="web", how="t")
    store.content.path_of(v.digest).unlink()
    with pytest.raises(ImageError, match="not in the store: an untagged version's is collected"):
        store.manifest(v.digest)
    assert store.history(v.digest) == [v]


def test_manifest_cache_is_bounded(tmp_path: Path) -> None:
    from softudc.images.store import MANIFEST_CACHE
    store = ImageStore.open(tmp_path)
    digests = [store.commit(tree(store, ("/n", str(i).encode())), name="x", how="t").digest
               for i in range(MANIFEST_CACHE + 2)]
    for d in digests:
        assert store.manifest(d)[1].path == "/n"
    assert store.manifest(digests[-1]) is not store.manifest(digests[-1])  # fresh lists
    assert len(store._manifests) == MANIFEST_CACHE


def test_usage_counts_sharing(tmp_path: Path) -> None:
    store = ImageStore.open(tmp_path)
    assert store.usage() == {"logical_bytes": 0, "stored_bytes": 0, "objects": 0, "dedupe_ratio": 0.0}
    big = bytes(100_000)
    store.commit(tree(store, ("/a", big)), name="a", how="t")
    store.commit(tree(store, ("/b", big)), name="b", how="t")
    u = store.usage()
    assert u["logical_bytes"] == 200_000 and u["objects"] == 3
    assert u["stored_bytes"] == sum(size for _, size in store.content.objects())
    assert u["dedupe_ratio"] > 100  # zeros compress well, and are stored once


def test_corrupt_manifest_object_is_an_integrity_error(tmp_path: Path) -> None:
    from softudc.images.content import IntegrityError
    store = ImageStore.open(tmp_path)
    v = store.commit(tree(store, ("/a", b"1")), name="web", how="t")
    other = store.content.put(b"not a manifest")
    store.content.path_of(v.digest).write_bytes(store.content.path_of(other).read_bytes())
    with pytest.raises(IntegrityError, match=f"object {v.digest} is corrupt"):
        ImageStore.open(tmp_path).manifest("web")


def test_commit_touches_the_objects_it_reuses_and_ends_the_lease(tmp_path: Path) -> None:
    import os
    store = ImageStore.open(tmp_path)
    entries = tree(store, ("/a", b"reused"))
    store.commit(entries, name="a", how="t")
    path = store.content.path_of(entries[1].digest)
    os.utime(path, (1000, 1000))
    patched = ImageStore.open(tmp_path)  # a patch: a manifest made from another's, nothing put
    patched.commit([*entries, Entry("/b", "dir", 0o755)], name="b", how="patch")
    assert path.stat().st_mtime > 1000
    assert patched.content._lease is None and not list((tmp_path / "leases").iterdir())
    with pytest.raises(ImageError):
        patched.commit([Entry("/f", "file", 0o644, size=1, digest="sha256:" + "a" * 64)], name="c", how="t")
    assert patched.content._lease is None
