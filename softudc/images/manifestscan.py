"""Finding a few entries in a manifest's canonical bytes without parsing all of it. Parsing a
10k-entry manifest takes ~0.2 s in Python; a search across 100 images must take under a second
(issue 14), so search looks for the bytes an entry must start with — every line is
`{"path":<json string>,...` (manifest.py: compact separators, ensure_ascii=False) — and parses
only the lines that match. Every candidate is parsed and checked again, so a loose byte match can
cost time but never give a wrong hit."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from softudc.images.manifest import Entry, parse_manifest

_PATH_LINE = re.compile(rb'^\{"path":("(?:[^"\\\n]|\\.)*")', re.M)
# One character of a JSON string's UTF-8 bytes: a plain byte, a multi-byte character, an escape.
_ANY = rb'(?:[^"\\\n\x80-\xff]|[\xc0-\xff][\x80-\xbf]*|\\(?:u[0-9a-fA-F]{4}|.))'


def _key(path: str) -> bytes:
    return b'{"path":' + json.dumps(path, ensure_ascii=False).encode("utf-8") + b","


def _line_at(data: bytes, pos: int) -> Entry:
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    return parse_manifest(data[start:end + 1 if end >= 0 else len(data)], source="manifest line")[0]


def find_entry(data: bytes, path: str) -> Entry | None:
    """The entry for exactly `path` (no symlink followed)."""
    key = _key(path)
    if data.startswith(key):
        pos = 0
    else:
        pos = data.find(b"\n" + key) + 1
        if pos == 0:
            return None
    e = _line_at(data, pos)
    return e if e.path == path else None


def _class(glob: str, i: int) -> tuple[bytes, int] | None:
    """The regex for the character class starting at glob[i] ("[") and the index after it; None
    when the class could match a character JSON escapes (quote, backslash, control, or any
    character for a negated class): the caller then checks every path."""
    j = i + 1
    if j < len(glob) and glob[j] == "]":
        j += 1
    j = glob.find("]", j)
    if j < 0:
        return re.escape(b"["), i + 1  # fnmatch: an unclosed "[" is a literal
    body = glob[i + 1:j]
    if body.startswith("!") or any(c in '"\\' or c < " " or not c.isascii() for c in body):
        return None
    return b"[" + body.replace("^", "\\^").replace("[", "\\[").encode("ascii") + b"]", j + 1


def _glob_regex(glob: str) -> re.Pattern[bytes] | None:
    """A byte regex for lines whose JSON path may match `glob` (fnmatch rules); None when it
    cannot be written over the JSON text (then every path is checked)."""
    parts: list[bytes] = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        if ch == "[":
            cls = _class(glob, i)
            if cls is None:
                return None
            part, i = cls
            parts.append(part)
            continue
        parts.append(_ANY + b"*" if ch == "*" else _ANY if ch == "?" else
                     re.escape(json.dumps(ch, ensure_ascii=False)[1:-1].encode("utf-8")))
        i += 1
    return re.compile(b'\\{"path":"' + b"".join(parts) + b'",')


def _candidates(data: bytes, glob: str, rx: re.Pattern[bytes]) -> list[int]:
    """Line starts where `rx` matches, looked for from the glob's literal prefix (found by
    bytes.find, much faster than trying the regex at every line)."""
    cut = min((glob.find(c) for c in "*?[" if c in glob), default=len(glob))
    prefix = b'{"path":' + json.dumps(glob[:cut], ensure_ascii=False).encode("utf-8")[:-1]
    out = [0] if rx.match(data, 0) else []
    pos = data.find(b"\n" + prefix)
    while pos >= 0:
        if rx.match(data, pos + 1):
            out.append(pos + 1)
        pos = data.find(b"\n" + prefix, pos + 1)
    return out


def _all_paths(data: bytes, glob: str) -> list[int]:
    out = []
    for m in _PATH_LINE.finditer(data):
        raw = m.group(1)
        path = raw[1:-1].decode("utf-8") if b"\\" not in raw else json.loads(raw)
        if fnmatch.fnmatchcase(path, glob):
            out.append(m.start())
    return out


def find_glob(data: bytes, glob: str) -> list[Entry]:
    """Entries whose path matches the shell-style `glob` (fnmatch: `*` also crosses '/')."""
    rx = _glob_regex(glob)
    starts = _all_paths(data, glob) if rx is None else _candidates(data, glob, rx)
    return [e for e in (_line_at(data, pos) for pos in starts) if fnmatch.fnmatchcase(e.path, glob)]


def find_digest(data: bytes, digest: str) -> list[tuple[Entry, str]]:
    """Files holding the content `digest`: ("content", whole file) or ("chunk", one of its chunks)."""
    needle = json.dumps(digest).encode("ascii")
    out: list[tuple[Entry, str]] = []
    pos = data.find(needle)
    while pos >= 0:
        e = _line_at(data, pos)
        if e.digest == digest:
            out.append((e, "content"))
        elif digest in e.chunks:
            out.append((e, "chunk"))
        nxt = data.find(b"\n", pos)
        pos = data.find(needle, nxt) if nxt >= 0 else -1
    return out


def find_children(data: bytes, directory: str) -> list[Entry]:
    """The entries right inside `directory` (an exact path), in manifest order."""
    base = directory.rstrip("/")
    key = _key(base + "/")[:-2]  # '{"path":"/dir/' without the closing quote and comma
    rx = re.compile(re.escape(key) + rb'(?:[^"\\/\n]|\\.)+",')
    out = []
    pos = data.find(b"\n" + key)
    while pos >= 0:
        if rx.match(data, pos + 1):
            out.append(_line_at(data, pos + 1))
        pos = data.find(b"\n" + key, pos + 1)
    return out


_KIND_LINE = re.compile(rb'^\{"path":"((?:[^"\\\n]|\\.)*)","type":"([a-z]+)","mode":"[0-7]{4}"'
                        rb'(?:,"uid":\d+)?(?:,"gid":\d+)?(?:,"size":(\d+))?', re.M)


def sizes_of(data: bytes) -> dict[str, Any]:
    """Entries by type, logical bytes and file bytes by top directory, from the bytes alone (the
    fields come in a fixed order: path, type, mode, uid, gid, size)."""
    by_type: dict[str, int] = {}
    by_top: dict[str, int] = {}
    logical = 0
    for m in _KIND_LINE.finditer(data):
        kind = m.group(2).decode("ascii")
        by_type[kind] = by_type.get(kind, 0) + 1
        if kind == "file":
            size = int(m.group(3) or 0)
            raw = m.group(1)
            path = json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("utf-8")
            parts = path.split("/", 2)
            top = "/" + parts[1] if len(parts) > 2 else "/"
            by_top[top] = by_top.get(top, 0) + size
            logical += size
    return {"entries": sum(by_type.values()), "files": by_type.get("file", 0), "by_type": by_type,
            "logical_bytes": logical, "by_top_dir": dict(sorted(by_top.items()))}


class ScanIndex(Mapping[str, Entry]):
    """A manifest's entries by path, looked up in its bytes on demand (for lookup.resolve)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._seen: dict[str, Entry | None] = {}

    def __getitem__(self, path: str) -> Entry:
        if path not in self._seen:
            self._seen[path] = find_entry(self.data, path)
        e = self._seen[path]
        if e is None:
            raise KeyError(path)
        return e

    def __iter__(self) -> Iterator[str]:
        for m in _PATH_LINE.finditer(self.data):
            yield json.loads(m.group(1))

    def __len__(self) -> int:
        return self.data.count(b"\n")
