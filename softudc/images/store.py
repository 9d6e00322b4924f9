"""The image store: versions (manifests with their provenance) and the names and tags that point
at them, over the shared content store.

    ROOT/objects/...   content and manifests (content.py); a manifest is an object like any other
    ROOT/refs.db       SQLite (WAL): versions, tags, and each name's last version number

A version is identified by its manifest's digest and records the versions it was derived from
(`parents`) and how (`how`): the provenance tree `softudc image history` walks. Committing with a
name tags the version NAME:N (N one more than the name's last number, never reused) and moves
NAME:latest. SQLite serialises concurrent CLI processes (BEGIN IMMEDIATE, a busy timeout); a
version row is never deleted, so history outlives a garbage collection of its content (gc.py).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softudc.images.content import ContentStore, MissingObjectError
from softudc.images.manifest import Entry, manifest_bytes, parse_manifest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PREFIX = re.compile(r"sha256:[0-9a-f]{12,64}")
LATEST = "latest"
MANIFEST_CACHE = 8  # parsed manifests kept in memory (a Debian image's is ~10k entries)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    digest TEXT PRIMARY KEY, parents TEXT NOT NULL, how TEXT NOT NULL, created REAL NOT NULL,
    entries INTEGER NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tags (tag TEXT PRIMARY KEY, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, last INTEGER NOT NULL);
"""


class ImageError(Exception):
    """No such image or tag, or a bad name; the message says what exists or what to do."""


@dataclass(frozen=True)
class Version:
    digest: str
    parents: tuple[str, ...]
    how: str
    created: float


def split_tag(tag: str) -> tuple[str, str]:
    """("web", "2") from "web:2"; ("web", "latest") from "web"; ImageError for a bad name or tag."""
    name, _, label = tag.partition(":")
    label = label or LATEST
    for part, what in ((name, "name"), (label, "tag")):
        if not _NAME.fullmatch(part):
            raise ImageError(f"bad image {what} {part!r} in {tag!r}: use letters, digits, '.', '_' and '-' "
                             "(up to 64, starting with a letter or digit), e.g. web or web:2")
    return name, label


def _version(row: Any) -> Version:
    return Version(row[0], tuple(json.loads(row[1])), row[2], row[3])


class ImageStore:
    """Versions, tags and the content store under `root` (create with `ImageStore.open`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.content = ContentStore(root)
        self._db = sqlite3.connect(root / "refs.db", timeout=60, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._manifests: OrderedDict[str, list[Entry]] = OrderedDict()  # the last few read
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, root: Path) -> ImageStore:
        """The store at `root`, created if it does not exist yet."""
        try:
            (root / "objects").mkdir(parents=True, exist_ok=True)
            return cls(root)
        except (OSError, sqlite3.Error) as e:
            raise ImageError(f"cannot use {root} as an image store: {e}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so concurrent processes queue
        on the busy timeout instead of failing halfway."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # writing

    def _check_content(self, entries: list[Entry]) -> None:
        """Every object the entries name is stored, and touched: a version made from another's
        manifest (a patch) reuses objects it never put, and a GC that marked before this commit
        and sweeps after it must still keep them."""
        for e in entries:
            if e.type != "file":
                continue
            for part in e.chunks or (e.digest,):
                if not self.content.touch(part):
                    raise ImageError(f"entry {e.path}: its content {part} is not in the store; store it "
                                     "(ContentStore.put_file) before committing the manifest")

    def commit(self, entries: list[Entry], *, name: str | None, parents: Sequence[str] = (),
               how: str) -> Version:
        """Records the version whose tree is `entries` (ManifestError for a bad entry, ImageError
        for content not in the store; nothing is recorded then). With `name`, tags it NAME:N and
        NAME:latest. Committing a tree already stored returns the version recorded first. Ends
        the writer's lease (content.py) either way."""
        try:
            return self._commit(entries, name, parents, how)
        finally:
            self.content.release_lease()  # done, or given up: either way a GC may judge them now

    def _commit(self, entries: list[Entry], name: str | None, parents: Sequence[str], how: str) -> Version:
        data = manifest_bytes(entries)
        if name is not None:
            split_tag(name)
            if ":" in name:
                raise ImageError(f"commit under a name without a tag, not {name!r}: NAME:N is chosen for you")
        self._check_content(entries)
        parent_digests = [self.resolve(p).digest for p in parents]
        digest = self.content.put(data)
        self.content.sync()
        size = sum(e.size for e in entries)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                       (digest, json.dumps(parent_digests), how, time.time(), len(entries), size))
            if name is not None:
                row = db.execute("SELECT last FROM names WHERE name = ?", (name,)).fetchone()
                number = (row[0] if row else 0) + 1
                db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name, number))
                for label in (str(number), LATEST):
                    db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?)", (f"{name}:{label}", digest))
            row = db.execute("SELECT * FROM versions WHERE digest = ?", (digest,)).fetchone()
        return _version(row)

    def tag(self, ref: str, tag: str) -> None:
        """Points `tag` ("web:prod", or "web" for web:latest) at the version `ref` names."""
        digest = self.resolve(ref).digest
        name, label = split_tag(tag)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?)", (f"{name}:{label}", digest))
            if label.isdigit():  # keep NAME:N of later commits from landing on this one
                db.execute("INSERT INTO names VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                           "last = max(last, excluded.last)", (name, int(label)))

    def untag(self, tag: str) -> None:
        """Removes `tag` ("web:2"), or every tag of a name ("web"); the versions stay until a GC."""
        name, label = split_tag(tag)
        with self._tx() as db:
            if ":" in tag:
                gone = db.execute("DELETE FROM tags WHERE tag = ?", (f"{name}:{label}",)).rowcount
            else:
                gone = db.execute("DELETE FROM tags WHERE substr(tag, 1, ?) = ?",
                                  (len(name) + 1, f"{name}:")).rowcount
        if not gone:
            raise ImageError(f"no tag {tag!r} to remove; {self._what_exists()}")

    # reading

    def _what_exists(self) -> str:
        names = sorted({t.partition(":")[0] for t in self.tags()})
        return (f"images: {', '.join(names)} (see `softudc image list`)" if names
                else "the store holds no image yet (import or build one)")

    def resolve(self, ref: str) -> Version:
        """The version `ref` names: "web" (web:latest), "web:2", or "sha256:" and at least 12
        hex digits of its digest."""
        if ref.startswith("sha256:"):
            if not _PREFIX.fullmatch(ref):
                raise ImageError(f"{ref!r}: give 'sha256:' and at least 12 lowercase hex digits of a version")
            rows = self._query("SELECT * FROM versions WHERE substr(digest, 1, ?) = ?", (len(ref), ref))
            if len(rows) > 1:
                raise ImageError(f"{ref!r} matches {len(rows)} versions: give more digits")
            if not rows:
                raise ImageError(f"no version {ref}; {self._what_exists()}")
            return _version(rows[0])
        name, label = split_tag(ref)
        rows = self._query("SELECT v.* FROM tags t JOIN versions v ON v.digest = t.digest WHERE t.tag = ?",
                           (f"{name}:{label}",))
        if not rows:
            tags = sorted(t for t in self.tags() if t.startswith(f"{name}:"))
            known = f"{name} has tags {', '.join(tags)}" if tags else f"no image {name}; {self._what_exists()}"
            raise ImageError(f"no image {name}:{label}: {known}")
        return _version(rows[0])

    def manifest(self, ref: str) -> list[Entry]:
        """The entries of the version `ref` names (a fresh list; entries are immutable)."""
        digest = self.resolve(ref).digest
        with self._lock:
            cached = self._manifests.get(digest)
            if cached is not None:
                self._manifests.move_to_end(digest)
        if cached is None:
            try:
                data = self.content.get(digest)
            except MissingObjectError:
                raise ImageError(f"the manifest of {digest} is not in the store: an untagged version's is "
                                 "collected by `softudc image gc` (its history is kept); for a tagged one "
                                 "run `softudc image verify`") from None
            cached = parse_manifest(data, source=f"manifest {digest}", expect=digest)
            with self._lock:
                self._manifests[digest] = cached
                if len(self._manifests) > MANIFEST_CACHE:
                    self._manifests.popitem(last=False)
        return list(cached)

    def tags(self) -> dict[str, str]:
        """Every tag ("web:2") and the digest it points at."""
        return {str(t): str(d) for t, d in self._query("SELECT tag, digest FROM tags ORDER BY tag")}

    def versions(self) -> list[Version]:
        """Every version ever committed, oldest first (untagged and collected ones too)."""
        return [_version(r) for r in self._query("SELECT * FROM versions ORDER BY created, digest")]

    def stats(self, digest: str) -> tuple[int, int]:
        """(entries, logical bytes of file content) of a version, as recorded at commit."""
        rows = self._query("SELECT entries, size FROM versions WHERE digest = ?", (digest,))
        if not rows:
            raise ImageError(f"no version {digest}; {self._what_exists()}")
        return int(rows[0][0]), int(rows[0][1])

    def usage(self) -> dict[str, float]:
        """What sharing saves: the file bytes of every tagged version added up (logical_bytes)
        against the bytes every object takes on disk (stored_bytes, manifests included)."""
        logical = sum(self.stats(d)[1] for d in set(self.tags().values()))
        stored = objects = 0
        for _, size in self.content.objects():
            stored += size
            objects += 1
        return {"logical_bytes": logical, "stored_bytes": stored, "objects": objects,
                "dedupe_ratio": round(logical / stored, 2) if stored else 0.0}

    def history(self, ref: str) -> list[Version]:
        """The version `ref` names, then its ancestors (breadth first, each once)."""
        out: list[Version] = []
        queue, seen = [self.resolve(ref)], set[str]()
        while queue:
            v = queue.pop(0)
            if v.digest in seen:
                continue
            seen.add(v.digest)
            out.append(v)
            queue.extend(self.resolve(p) for p in v.parents)
        return out
