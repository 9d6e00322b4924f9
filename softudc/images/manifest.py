"""An image version's manifest: every entry of its file tree, sorted by path, as canonical JSON
lines. The manifest's SHA-256 is the version's identity, so the bytes must be canonical: one
entry per line, keys in a fixed order (FIELDS), no spaces, empty fields left out, mode as four
octal digits, lines sorted by `sort_key` and ending in "\\n".

    {"path":"/","type":"dir","mode":"0755"}
    {"path":"/etc","type":"dir","mode":"0755"}
    {"path":"/etc/hostname","type":"file","mode":"0644","size":4,"digest":"sha256:..."}
    {"path":"/etc/motd","type":"symlink","mode":"0777","target":"/var/run/motd"}

File contents live in the content store (content.py), named by `digest` (the whole content's
SHA-256), or as the `chunks` listed (each a stored object) when the file was split. Nothing here
does I/O: bytes in, entries out (STYLE.md §1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TYPES = ("file", "dir", "symlink", "device", "fifo")
FIELDS = ("path", "type", "mode", "uid", "gid", "size", "digest", "chunks", "target", "device", "xattrs")
MAX_ID = 2**32 - 1
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_DEVICE = re.compile(r"[cb] (0|[1-9][0-9]{0,9}) (0|[1-9][0-9]{0,9})")
_MODE = re.compile(r"[0-7]{4}")


class ManifestError(ValueError):
    """A manifest or an entry that breaks the format; the message names the source, line and field."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of an image's tree (see the module docstring for the fields' rules)."""

    path: str
    type: str
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    digest: str = ""
    chunks: tuple[str, ...] = ()
    target: str = ""
    device: str = ""
    xattrs: tuple[tuple[str, str], ...] = ()


def sort_key(path: str) -> bytes:
    """Entries are kept sorted by path components compared as UTF-8 bytes: a directory comes right
    before its contents ("/a", "/a/b", "/a-b"), whatever the locale. Comparing the bytes with "/"
    turned into NUL (which no path holds) is that order, at the speed of a bytes comparison."""
    return path.encode("utf-8", "surrogatepass").replace(b"/", b"\0")


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def check_path(path: object) -> str | None:
    """Why `path` is not a normalised absolute path, or None if it is."""
    if not isinstance(path, str):
        return "must be a string"
    if path == "/":
        return None
    if not path.startswith("/") or path.endswith("/"):
        return f"{path!r} must start with '/' and not end with one"
    if "\0" in path:
        return f"{path!r} holds a NUL byte"
    if "//" in path or "/./" in path or "/../" in path or path.endswith(("/.", "/..")):
        return f"{path!r} has an empty, '.' or '..' component"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return f"{path!r} is not valid UTF-8"
    return None


def _check_int(value: object, top: int) -> str | None:
    if type(value) is not int or not 0 <= value <= top:  # bool is an int subclass: refused too
        return f"must be an integer from 0 to {top}, not {value!r}"
    return None


def _check_xattrs(xattrs: object) -> str | None:
    if not isinstance(xattrs, tuple):
        return "must be a list of [name, base64 value] pairs"
    names: list[str] = []
    for pair in xattrs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            return f"{pair!r} is not a [name, base64 value] pair"
        name, value = pair
        if not name or "\0" in name:
            return f"name {name!r} is empty or holds a NUL"
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return f"{name}: the value is not base64"
        names.append(name)
    if names != sorted(set(names)):
        return "names must be unique and sorted"
    return None


def _check_kind(e: Entry) -> tuple[str, str] | None:
    """The (field, reason) that breaks the rules of e.type, or None."""
    is_file = e.type == "file"
    if not is_file and (e.size or e.digest or e.chunks):
        return "size", f"only files have size, digest or chunks (this is a {e.type})"
    if is_file and not is_digest(e.digest):
        return "digest", f"a file needs 'sha256:' and 64 lowercase hex digits, not {e.digest!r}"
    if not isinstance(e.chunks, tuple) or not all(is_digest(c) for c in e.chunks):
        return "chunks", "must be a list of 'sha256:<64 hex>' digests"
    if (e.type == "symlink") != bool(e.target):
        return "target", "a symlink needs a target, and only a symlink has one"
    if not isinstance(e.target, str) or "\0" in e.target:
        return "target", "must be a string without NUL"
    if (e.type == "device") != bool(e.device):
        return "device", "a device needs 'c|b MAJOR MINOR', and only a device has one"
    if e.device and (not isinstance(e.device, str) or not _DEVICE.fullmatch(e.device)):
        return "device", f"must be 'c MAJOR MINOR' or 'b MAJOR MINOR', not {e.device!r}"
    return None


def check_entry(e: Entry) -> tuple[str, str] | None:
    """The first (field, reason) that makes `e` invalid, or None."""
    if (why := check_path(e.path)) is not None:
        return "path", why
    if e.type not in TYPES:
        return "type", f"must be one of {', '.join(TYPES)}, not {e.type!r}"
    for field, top in (("mode", 0o7777), ("uid", MAX_ID), ("gid", MAX_ID), ("size", 2**63 - 1)):
        if (why := _check_int(getattr(e, field), top)) is not None:
            return field, why
    if (why := _check_xattrs(e.xattrs)) is not None:
        return "xattrs", why
    if e.path == "/" and e.type != "dir":
        return "type", "the root '/' must be a dir"
    return _check_kind(e)


def _as_json(e: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"path": e.path, "type": e.type, "mode": f"{e.mode:04o}"}
    for field in FIELDS[3:]:
        value = getattr(e, field)
        if value:
            out[field] = [list(x) for x in value] if field == "xattrs" else value
    return out


def _sorted_checked(entries: Iterable[Entry], source: str) -> list[Entry]:
    out = sorted(entries, key=lambda e: sort_key(e.path) if isinstance(e.path, str) else b"")
    for i, e in enumerate(out):
        if (bad := check_entry(e)) is not None:
            raise ManifestError(f"{source}: entry {e.path!r}: field {bad[0]}: {bad[1]}")
        if i and out[i - 1].path == e.path:
            raise ManifestError(f"{source}: entry {e.path!r}: field path: appears twice")
    return out


def manifest_bytes(entries: Iterable[Entry]) -> bytes:
    """The canonical bytes of a manifest holding `entries` (in any order; they are sorted here).
    ManifestError if an entry is invalid or a path appears twice."""
    lines = (json.dumps(_as_json(e), separators=(",", ":"), ensure_ascii=False)
             for e in _sorted_checked(entries, "manifest"))
    return "".join(line + "\n" for line in lines).encode("utf-8")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_digest(entries: Iterable[Entry]) -> str:
    """The identity of the version whose tree is `entries`: the digest of its canonical bytes."""
    return digest_of(manifest_bytes(entries))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a manifest may hold")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one decoder: json.loads makes one a call
_REQUIRED = frozenset(("path", "type", "mode"))
_KNOWN = frozenset(FIELDS)


def _field(name: str, value: Any) -> Any:
    if name in ("chunks", "xattrs"):
        if not isinstance(value, list):
            raise ValueError(f"field {name}: must be a list")
        if name == "xattrs":
            return tuple(tuple(p) if isinstance(p, list) else p for p in value)
        return tuple(value)
    if name == "mode":
        if not isinstance(value, str) or not _MODE.fullmatch(value):
            raise ValueError(f"field mode: must be four octal digits like \"0644\", not {value!r}")
        return int(value, 8)
    return value


def _entry_from_line(line: bytes) -> Entry:
    obj = _DECODER.decode(line.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if not obj.keys() <= _KNOWN:
        raise ValueError(f"field {sorted(obj.keys() - _KNOWN)[0]}: unknown (known: {', '.join(FIELDS)})")
    if not obj.keys() >= _REQUIRED:
        raise ValueError(f"field {sorted(_REQUIRED - obj.keys())[0]}: missing")
    e = Entry(**{name: _field(name, value) for name, value in obj.items()})
    if (bad := check_entry(e)) is not None:
        raise ValueError(f"field {bad[0]}: {bad[1]}")
    return e


def parse_manifest(data: bytes, *, source: str = "manifest", expect: str | None = None) -> list[Entry]:
    """The entries of manifest `data` (read from `source`, named in errors). With `expect`, the
    bytes must hash to that digest. Lines must be sorted and unique paths; ManifestError names the
    line and field of the first problem."""
    if expect is not None and digest_of(data) != expect:
        raise ManifestError(f"{source}: its content hashes to {digest_of(data)}, not {expect}: the "
                            "manifest is corrupt or not the one named")
    if data and not data.endswith(b"\n"):
        last = data.count(b"\n") + 1
        raise ManifestError(f"{source}: line {last}: does not end with a newline (truncated?)")
    entries: list[Entry] = []
    prev = b""
    for n, line in enumerate(data.split(b"\n")[:-1], start=1):
        try:
            e = _entry_from_line(line)
        except (ValueError, RecursionError, TypeError) as err:
            reason = "not UTF-8" if isinstance(err, UnicodeDecodeError) else str(err) or type(err).__name__
            raise ManifestError(f"{source}: line {n}: {reason}") from None
        key = sort_key(e.path)
        if entries and prev >= key:
            raise ManifestError(f"{source}: line {n}: field path: {e.path!r} is out of order or repeated "
                                f"(after {entries[-1].path!r}); entries are sorted by path")
        entries.append(e)
        prev = key
    return entries


def index(entries: list[Entry]) -> dict[str, Entry]:
    """The entries by path."""
    return {e.path: e for e in entries}
