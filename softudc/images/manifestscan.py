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

from softudc.images.manifest import Entry, parse_manifest

_PATH_LINE = re.compile(rb'^\{"path":("(?:[^"\\\n]|\\.)*")', re.M)
_ANY = r'(?:[^"\\\n]|\\.)'


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


def _glob_regex(glob: str) -> re.Pattern[bytes] | None:
    """A byte regex for lines whose JSON path may match `glob`; None when the glob has a
    character class (then every path is checked)."""
    if "[" in glob:
        return None
    parts = []
    for ch in glob:
        if ch == "*":
            parts.append(_ANY + "*")
        elif ch == "?":
            parts.append(_ANY)
        else:
            parts.append(re.escape(json.dumps(ch, ensure_ascii=False)[1:-1]))
    return re.compile(('^\\{"path":"' + "".join(parts) + '",').encode("utf-8"), re.M)


def find_glob(data: bytes, glob: str) -> list[Entry]:
    """Entries whose path matches the shell-style `glob` (fnmatch: `*` also crosses '/')."""
    rx = _glob_regex(glob)
    starts = [m.start() for m in (rx or _PATH_LINE).finditer(data)]
    out = []
    for pos in starts:
        if rx is None:
            m = _PATH_LINE.match(data, pos)
            if m is None or not fnmatch.fnmatchcase(json.loads(m.group(1)), glob):
                continue
        e = _line_at(data, pos)
        if fnmatch.fnmatchcase(e.path, glob):
            out.append(e)
    return out


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
