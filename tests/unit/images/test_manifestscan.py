"""Byte scans of a manifest give exactly what a full parse plus fnmatch gives, for any paths
(quotes, backslashes, non-ASCII, newlines included)."""

from __future__ import annotations

import fnmatch

from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.images.manifest import Entry, manifest_bytes, parse_manifest
from softudc.images.manifestscan import find_digest, find_entry, find_glob

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")

NAMES = st.text(alphabet=st.sampled_from(list('ab.-_"\\*?[]é\n x')), min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))


def tree(names: list[str]) -> list[Entry]:
    entries = {"/": Entry("/", "dir", 0o755), "/d": Entry("/d", "dir", 0o755)}
    for i, n in enumerate(names):
        for path in (f"/{n}", f"/d/{n}"):
            entries[path] = Entry(path, "file", 0o644, size=1, digest=(D1, D2)[i % 2], chunks=(D3,) if i % 3 else ())
    return list(entries.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(NAMES, max_size=10, unique=True), NAMES)
def test_find_entry_agrees_with_parse(names: list[str], probe: str) -> None:
    data = manifest_bytes(tree(names))
    parsed = {e.path: e for e in parse_manifest(data)}
    for path in ["/", "/d", f"/{probe}", f"/d/{probe}", *parsed]:
        assert find_entry(data, path) == parsed.get(path)


@settings(max_examples=150, deadline=None)
@given(st.lists(NAMES, max_size=10, unique=True),
       st.text(alphabet=st.sampled_from(list('ab/*?é"\\[]!')), min_size=1, max_size=6))
def test_find_glob_agrees_with_fnmatch(names: list[str], glob: str) -> None:
    data = manifest_bytes(tree(names))
    glob = "/" + glob
    want = [e for e in parse_manifest(data) if fnmatch.fnmatchcase(e.path, glob)]
    assert find_glob(data, glob) == want


def test_find_digest_tells_content_from_chunk() -> None:
    data = manifest_bytes(tree(["a", "b", "c", "e"]))
    whole = {e.path for e, how in find_digest(data, D2) if how == "content"}
    assert whole == {"/b", "/d/b", "/e", "/d/e"}
    chunk = {e.path for e, how in find_digest(data, D3)}
    assert chunk == {"/b", "/d/b", "/c", "/d/c"}
    assert find_digest(data, "sha256:" + "9" * 64) == []
