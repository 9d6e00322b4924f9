from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softudc.images.manifest import (
    FIELDS,
    Entry,
    ManifestError,
    index,
    manifest_bytes,
    manifest_digest,
    parse_manifest,
    sort_key,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def tree() -> list[Entry]:
    return [
        Entry("/etc/hostname", "file", 0o644, size=4, digest=D1),
        Entry("/", "dir", 0o755),
        Entry("/etc", "dir", 0o755),
        Entry("/etc/motd", "symlink", 0o777, target="../run/motd"),
        Entry("/dev/null", "device", 0o666, device="c 1 3"),
        Entry("/big", "file", 0o600, uid=1000, gid=100, size=9, digest=D2, chunks=(D1, D1)),
        Entry("/run/fifo", "fifo", 0o600, xattrs=(("user.a", base64.b64encode(b"x").decode()),)),
    ]


def test_canonical_bytes_sorted_and_compact() -> None:
    data = manifest_bytes(tree())
    lines = data.decode().splitlines()
    assert lines[0] == '{"path":"/","type":"dir","mode":"0755"}'
    assert [line.split('"')[3] for line in lines] == ["/", "/big", "/dev/null", "/etc", "/etc/hostname",
                                                      "/etc/motd", "/run/fifo"]
    assert '"uid":1000,"gid":100,"size":9' in lines[1]
    assert manifest_bytes(reversed(tree())) == data


def test_round_trip_and_digest() -> None:
    data = manifest_bytes(tree())
    entries = parse_manifest(data, expect=manifest_digest(tree()))
    assert manifest_bytes(entries) == data
    assert index(entries)["/etc/motd"].target == "../run/motd"


def test_sort_key_keeps_a_directory_before_its_contents() -> None:
    paths = ["/a-b", "/a/b", "/a", "/"]
    assert sorted(paths, key=sort_key) == ["/", "/a", "/a/b", "/a-b"]


def test_bad_digest_expectation_names_source() -> None:
    with pytest.raises(ManifestError, match=r"m\.jsonl: its content hashes to sha256:.*not sha256:0+"):
        parse_manifest(manifest_bytes(tree()), source="m.jsonl", expect="sha256:" + "0" * 64)


@pytest.mark.parametrize("entry, field", [
    (Entry("etc", "dir", 0o755), "path"),
    (Entry("/a/../b", "dir", 0o755), "path"),
    (Entry("/a/", "dir", 0o755), "path"),
    (Entry("/a", "sock", 0o755), "type"),
    (Entry("/a", "dir", 0o10000), "mode"),
    (Entry("/a", "file", 0o644, digest="sha256:AB"), "digest"),
    (Entry("/a", "dir", 0o755, digest=D1), "size"),
    (Entry("/a", "symlink", 0o777), "target"),
    (Entry("/a", "device", 0o600, device="x 1 2"), "device"),
    (Entry("/a", "file", 0o644, digest=D1, chunks=("nope",)), "chunks"),
    (Entry("/a", "fifo", 0o644, xattrs=(("b", ""), ("a", ""))), "xattrs"),
    (Entry("/", "file", 0o644, digest=D1), "type"),
])
def test_bad_entries_are_refused_naming_the_field(entry: Entry, field: str) -> None:
    with pytest.raises(ManifestError, match=f"field {field}"):
        manifest_bytes([entry])


def test_duplicate_paths_refused() -> None:
    with pytest.raises(ManifestError, match="twice"):
        manifest_bytes([Entry("/a", "dir", 0o755), Entry("/a", "dir", 0o700)])


@pytest.mark.parametrize("line, message", [
    (b'{"path":"/","type":"dir"}\n', "line 2: field mode: missing"),
    (b'{"path":"/","type":"dir","mode":493}\n', "line 2: field mode: must be four octal"),
    (b'{"path":"/","type":"dir","mode":"0755","colour":1}\n', "line 2: field colour: unknown"),
    (b'{"path":"/","type":"dir","mode":"0755","uid":true}\n', "line 2: field uid"),
    (b'{"path":"/a","type":"dir","mode":"0755"}\n', "line 2: field path: '/a' is out of order"),
    (b"[1]\n", "line 2: not a JSON object"),
    (b"\xff\n", "line 2: not UTF-8"),
    (b'{"path":"/x","type":"dir","mode":"0755"}', "line 2: does not end with a newline"),
])
def test_parse_names_line_and_field(line: bytes, message: str) -> None:
    first = b'{"path":"/a","type":"dir","mode":"0755"}\n'
    with pytest.raises(ManifestError, match=f"src: {message}"):
        parse_manifest(first + line, source="src")


def test_empty_manifest() -> None:
    assert parse_manifest(b"") == []
    assert manifest_bytes([]) == b""


TEXT = st.characters(blacklist_characters="/\0", blacklist_categories=["Cs"])
names = st.text(TEXT, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    path = "/" + "/".join(draw(st.lists(names, min_size=1, max_size=3)))
    kind = draw(st.sampled_from(["file", "dir", "symlink", "device", "fifo"]))
    xattrs = draw(st.dictionaries(names, st.binary(max_size=8), max_size=2))
    e = Entry(path, kind, draw(st.integers(0, 0o7777)), uid=draw(st.integers(0, 2**32 - 1)),
              gid=draw(st.integers(0, 70000)),
              xattrs=tuple((k, base64.b64encode(v).decode()) for k, v in sorted(xattrs.items())))
    if kind == "file":
        return replace(e, size=draw(st.integers(0, 2**40)), digest=draw(digests),
                       chunks=tuple(draw(st.lists(digests, max_size=3))))
    if kind == "symlink":
        return replace(e, target=draw(st.text(st.characters(blacklist_characters="\0",
                                                             blacklist_categories=["Cs"]), min_size=1)))
    if kind == "device":
        return replace(e, device=f"{draw(st.sampled_from('cb'))} {draw(st.integers(0, 999))} 7")
    return e


@settings(max_examples=200)
@given(st.lists(entries(), max_size=12, unique_by=lambda e: e.path))
def test_round_trip_property(es: list[Entry]) -> None:
    data = manifest_bytes(es)
    assert parse_manifest(data, expect=manifest_digest(es)) == sorted(es, key=lambda e: sort_key(e.path))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_only_raises_manifest_error(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(data)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                          st.lists(st.integers(), max_size=2)), min_size=11, max_size=11))
def test_wrong_json_types_only_raise_manifest_error(values: list[object]) -> None:
    line = json.dumps(dict(zip(FIELDS, values, strict=True))).encode() + b"\n"
    with contextlib.suppress(ManifestError):
        parse_manifest(line)
