"""Byte scans of a manifest give exactly what a full parse plus fnmatch gives, for any paths
(quotes, backslashes, non-ASCII, newlines included)."""

from __future__ import annotations

import fnmatch

from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.images.manifest import Entry, manifest_bytes, parse_manifest
from softudc.images.manifestscan import ScanIndex, find_children, find_digest, find_entry, find_glob, sizes_of

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


def mixed(names: list[str]) -> list[Entry]:
    """Files (some empty, some owned), dirs, symlinks, devices and fifos under a few top dirs."""
    out = {"/": Entry("/", "dir", 0o755)}
    for top in ("/a", "/b"):
        out[top] = Entry(top, "dir", 0o755, uid=5)
    for i, n in enumerate(names):
        top = ("/a", "/b", "")[i % 3]
        path = f"{top}/{n}"
        kind = ("file", "file", "symlink", "dir", "device", "fifo")[i % 6]
        out[path] = Entry(path, kind, 0o644, uid=i % 2, gid=i % 3, size=(i * 7) % 5 if kind == "file" else 0,
                          digest=D1 if kind == "file" else "", target="t" if kind == "symlink" else "",
                          device="c 1 3" if kind == "device" else "")
    return list(out.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(NAMES, max_size=14, unique=True))
def test_sizes_children_and_lookups_agree_with_parse(names: list[str]) -> None:
    from softudc.images.inspect import sizes
    from softudc.images.lookup import children

    entries = mixed(names)
    data = manifest_bytes(entries)
    parsed = parse_manifest(data)
    assert sizes_of(data) == sizes(parsed)
    for d in ("/", "/a", "/b", *(e.path for e in parsed if e.type == "dir")):
        assert find_children(data, d) == children(parsed, d)
    idx = ScanIndex(data)
    assert len(idx) == len(parsed) and list(idx) == [e.path for e in parsed]
    assert all(idx[e.path] == e for e in parsed) and idx.get("/nope") is None
