"""`softudc image search`: which tagged images hold a package (`openssl<3.0.15`, Debian version
order), a path (exact or a shell glob) or a file content (its digest) — across every tagged
version, from manifests and the dpkg status files, each version read once whatever the number of
tags pointing at it. Manifests are scanned as bytes (manifestscan.py) and status files parsed
once per digest (dpkg.CACHE): a family of 100 images is searched well under a second.

Hits can name the running VMs that carry the version: the caller passes `vms`, a mapping from
version digest to VM names (the manager fills it once images back VMs); without it the field is
left out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from softudc.images import dpkg
from softudc.images.content import IntegrityError
from softudc.images.diff import describe
from softudc.images.inspect import packages
from softudc.images.lookup import resolve
from softudc.images.manifest import Entry, ManifestError, index, parse_manifest
from softudc.images.manifestscan import find_digest, find_entry, find_glob

if TYPE_CHECKING:
    from softudc.images.store import ImageStore

GLOB_CHARS = frozenset("*?[")
STATUS_DIRS = ("/var", "/var/lib", "/var/lib/dpkg")


class SearchError(ValueError):
    """A search that cannot be run as asked (the message says how to ask)."""


@dataclass(frozen=True, slots=True)
class Query:
    package: dpkg.Spec | None = None
    file: str = ""
    digest: str = ""


def make_query(package: str | None, file: str | None, digest: str | None) -> Query:
    given = [x for x in (package, file, digest) if x]
    if len(given) != 1:
        raise SearchError("search for exactly one of: a package spec ('openssl<3.0.15'), a file path or glob "
                          "('/etc/ssl/*.pem'), a content digest ('sha256:...')")
    if digest and not (digest.startswith("sha256:") and len(digest) == 71):
        raise SearchError(f"digest {digest!r}: give a file content digest, 'sha256:' and 64 hex digits")
    if file and not (file.startswith("/") or file[0] in GLOB_CHARS):
        raise SearchError(f"file {file!r}: give an absolute path inside the image (/etc/ssl/openssl.cnf) "
                          "or a glob ('*/openssl.cnf')")
    return Query(dpkg.parse_spec(package) if package else None, file or "", (digest or "").lower())


def _status_packages(store: ImageStore, data: bytes, digest: str) -> list[dpkg.Package]:
    """The version's status paragraphs; the manifest is parsed whole only when the dpkg
    directory sits behind a symlink (rare: the status line is found by its bytes otherwise)."""
    if any((e := find_entry(data, d)) is not None and e.type == "symlink" for d in STATUS_DIRS):
        entries = parse_manifest(data, source=f"manifest {digest}")
        return packages(index(entries), store.content.read)
    e = find_entry(data, dpkg.STATUS_PATH)
    if e is None or e.type != "file":
        return []
    return dpkg.CACHE.get(e.digest, lambda: store.content.read(e), source=f"{dpkg.STATUS_PATH} of {digest}")


def _match_version(store: ImageStore, q: Query, data: bytes, digest: str) -> list[dict[str, Any]]:
    if q.package is not None:
        pkgs = _status_packages(store, data, digest)
        arch = dpkg.native_arch(pkgs)
        return [{"package": p.shown_name(arch), "version": p.version, "architecture": p.architecture,
                 "state": p.state} for p in pkgs if q.package.matches(p)]
    if q.digest:
        return [{"path": e.path, "as": how, **describe(e)} for e, how in find_digest(data, q.digest)]
    if GLOB_CHARS & set(q.file):
        return [{"path": e.path, **describe(e)} for e in find_glob(data, q.file)]
    e = _find_path(data, q.file, digest)
    return [] if e is None else [{"path": q.file, "found_at": e.path, **describe(e)}]


def _behind_symlink(data: bytes, path: str) -> bool | None:
    """Whether a directory on the way to `path` is a symlink; None if one is missing."""
    at = ""
    for part in path.split("/")[1:-1]:
        at += "/" + part
        e = find_entry(data, at)
        if e is None:
            return None
        if e.type == "symlink":
            return True
    return False


def _find_path(data: bytes, path: str, digest: str) -> Entry | None:
    """The entry at `path`, through the image's directory symlinks (/lib -> usr/lib) when there
    are some on the way (only then is the whole manifest parsed)."""
    e = find_entry(data, path)
    if e is not None or not _behind_symlink(data, path):
        return e
    return resolve(index(parse_manifest(data, source=f"manifest {digest}")), path, follow_last=False)


def versions_by_tag(store: ImageStore) -> dict[str, list[str]]:
    """Every tagged version's digest and its tags (sorted), each version once."""
    out: dict[str, list[str]] = {}
    for tag, digest in sorted(store.tags().items()):
        out.setdefault(digest, []).append(tag)
    return out


def search(store: ImageStore, *, package: str | None = None, file: str | None = None, digest: str | None = None,
           vms: Mapping[str, Sequence[str]] | None = None,
           progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One hit per (version, match): its tags, version digest, what matched (and VMs, with `vms`).
    A version whose manifest or status cannot be read is reported as a hit with an `error`."""
    q = make_query(package, file, digest)
    hits: list[dict[str, Any]] = []
    for version, tags in sorted(versions_by_tag(store).items(), key=lambda kv: kv[1]):
        base: dict[str, Any] = {"tags": tags, "version": version}
        if vms is not None:
            base["vms"] = sorted(vms.get(version, ()))
        try:
            matches = _match_version(store, q, store.content.get(version), version)
        except (IntegrityError, ManifestError, dpkg.DpkgError) as e:
            if progress:
                progress(f"search: {', '.join(tags)}: {e}")
            hits.append({**base, "error": str(e)})
            continue
        hits.extend({**base, "match": m} for m in matches)
    return hits
