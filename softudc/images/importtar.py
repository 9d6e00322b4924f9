"""Import a tar stream into the image store (issue 14, item 2), refusing archives that would be
dangerous to extract.

A tar is read twice, in stream mode ('r|*': plain, gzip, bzip2 or xz, from a pipe too; zstd
through python-zstandard): a first pass reads only the headers and checks every member, a second
stores contents and builds the entries. So a bad archive stores nothing at all, not even the
contents of the members before the bad one. A stream that cannot be rewound (stdin) is spooled
to a temporary file first.

What is refused (the error names the member and why; nothing is committed):
- a member name that is absolute ("/etc/passwd") or has a ".." component: extracting it would
  write outside the target directory;
- a hard link whose target is absolute, has "..", or is not an earlier file member of the
  archive (a link to a path outside the tree would expose a host file);
- a symlink whose target leaves the tree. A symlink is stored as its target string and never
  followed by the store, so the danger is only for whoever extracts the image later: a relative
  target is resolved against the member's directory, an absolute one against the image root
  (an image's "/etc/alternatives/editor" means the image's own /etc), and the target escapes if
  the resolution climbs above the root on the way ("../../../etc/shadow" from /a, or
  "/../../etc/shadow"). Absolute targets that stay inside are fine and common;
- a member below a symlink or a file ("evil -> /etc" then "evil/passwd": extraction would write
  through the link), and a directory with members below it replaced by a non-directory;
- a name or target that is not valid UTF-8 (manifests hold UTF-8 only).

Other rules, as tar itself does them: a member repeated later replaces the earlier one (last
wins); a directory that has members but no member of its own is implied, mode 0755, owned by
root; "./" prefixes are dropped ("./etc" is "/etc", "." the root). Extended attributes come from
pax SCHILY.xattr.* headers (what GNU tar --xattrs writes). Other member types (GNU volume
labels and the like) are skipped with a progress note.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import lzma
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import BinaryIO

import zstandard

from softudc.images.content import ContentStore
from softudc.images.importtree import ImportRefused, Progress, check_name, importing
from softudc.images.manifest import Entry
from softudc.images.store import ImageStore, Version

PROGRESS_EVERY = 5000  # members between two progress lines
XATTR_PREFIX = "SCHILY.xattr."
# What a damaged or truncated archive raises while it is read (gzip's BadGzipFile is an OSError).
UNREADABLE = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, zstandard.ZstdError)
Opener = Callable[[], AbstractContextManager[BinaryIO]]  # a fresh stream over the archive each call


def member_path(name: str) -> str:
    """The manifest path of a member name ("./etc/x" -> "/etc/x", "." -> "/"); ValueError says why
    a name is refused."""
    if name.startswith("/"):
        raise ValueError("the name is absolute (it would be written outside the target directory)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("the name has a '..' component (it could be written outside the target directory)")
    path = "/" + "/".join(parts)
    _utf8(path, "name")
    return path


def _utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the {what} is not valid UTF-8, which a manifest cannot hold") from None


def symlink_escapes(path: str, target: str) -> bool:
    """Whether symlink `path` -> `target` leads out of the image root when resolved without
    following other links: relative targets from the link's directory, absolute ones from "/"."""
    start = [] if target.startswith("/") else [p for p in posixpath.dirname(path).split("/") if p]
    depth = len(start)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


def _xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, value in member.pax_headers.items():
        if key.startswith(XATTR_PREFIX):
            raw = value.encode("utf-8", "surrogateescape")  # tarfile decoded the bytes this way
            pairs.append((key[len(XATTR_PREFIX):], base64.b64encode(raw).decode("ascii")))
    return tuple(sorted(pairs))


class TarChecker:
    """Walks the members of one archive in order, keeping what each path currently is, and refuses
    the members listed in the module docstring. `check` returns the member's manifest path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.kinds: dict[str, str] = {"/": "dir"}  # path -> "dir" | "file" | "other", members so far

    def refuse(self, member: tarfile.TarInfo, why: str) -> ImportRefused:
        return ImportRefused(f"{self.source}: member {member.name!r}: {why}; nothing was imported. "
                             "Fix or rebuild the archive (e.g. tar -C DIR -cf - .) and import again")

    def check(self, member: tarfile.TarInfo) -> str:
        try:
            path = member_path(member.name)
            self._check_parents(path)
            if member.issym():
                self._check_symlink(path, member.linkname)
            elif member.islnk():
                self.link_target(member)
            self._check_replace(path, member)
        except ValueError as e:
            raise self.refuse(member, str(e)) from None
        parent = posixpath.dirname(path)
        while parent not in self.kinds:  # implied directories (a later non-directory must not replace them)
            self.kinds[parent] = "dir"
            parent = posixpath.dirname(parent)
        self.kinds[path] = "dir" if member.isdir() else "file" if member.isreg() or member.islnk() else "other"
        return path

    def link_target(self, member: tarfile.TarInfo) -> str:
        """The manifest path of a hard link's target, an earlier file member."""
        try:
            target = member_path(member.linkname)
        except ValueError as e:
            raise ValueError(f"the hard link target {member.linkname!r} is refused: {e}") from None
        if self.kinds.get(target) != "file":
            raise ValueError(f"the hard link target {member.linkname!r} is not an earlier file member of "
                             "the archive (a link out of the tree would expose a host file)")
        return target

    def _check_parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent != "/":
            kind = self.kinds.get(parent)
            if kind is not None and kind != "dir":
                raise ValueError(f"it lies below {parent!r}, which is not a directory (extracting would "
                                 "write through a symlink or fail)")
            parent = posixpath.dirname(parent)

    @staticmethod
    def _check_symlink(path: str, target: str) -> None:
        if not target:
            raise ValueError("the symlink target is empty")
        _utf8(target, "symlink target")
        if symlink_escapes(path, target):
            raise ValueError(f"the symlink target {target!r} leads out of the image root")

    def _check_replace(self, path: str, member: tarfile.TarInfo) -> None:
        if member.isdir() or self.kinds.get(path) != "dir":
            return
        if path == "/" or any(p.startswith(path + "/") for p in self.kinds):
            raise ValueError("it replaces a directory that has members with a non-directory")


def _entry(member: tarfile.TarInfo, path: str) -> Entry | None:
    """The entry of a member that is not a file or a hard link, or None if not image content."""
    base = Entry(path=path, type="dir", mode=member.mode & 0o7777, uid=member.uid, gid=member.gid,
                 xattrs=_xattrs(member))
    if member.isdir():
        return base
    if member.issym():
        return dataclasses.replace(base, type="symlink", target=member.linkname)
    if member.ischr() or member.isblk():
        kind = "c" if member.ischr() else "b"
        return dataclasses.replace(base, type="device", device=f"{kind} {member.devmajor} {member.devminor}")
    if member.isfifo():
        return dataclasses.replace(base, type="fifo")
    return None


def _open(f: BinaryIO) -> tarfile.TarFile:
    return tarfile.open(fileobj=f, mode="r|*", errors="surrogateescape")


def check_tar(open_stream: Opener, source: str) -> tuple[int, int]:
    """Pass 1: every member's header checked (ImportRefused on the first bad one); the number of
    members, and of those carrying POSIX ACLs (GNU tar --acls: SCHILY.acl.*, kept as text, which
    the manifest does not hold)."""
    checker = TarChecker(source)
    n = acls = 0
    with open_stream() as f, _open(f) as tar:
        for member in tar:
            checker.check(member)
            n += 1
            acls += any(k.startswith("SCHILY.acl.") for k in member.pax_headers)
    return n, acls


def _implied_dirs(entries: dict[str, Entry]) -> None:
    for path in list(entries):
        parent = posixpath.dirname(path)
        while parent not in entries:
            entries[parent] = Entry(path=parent, type="dir", mode=0o755)
            parent = posixpath.dirname(parent)
    entries.setdefault("/", Entry(path="/", type="dir", mode=0o755))


def _file_entry(content: ContentStore, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> Entry:
    src = tar.extractfile(member)
    assert src is not None  # a regular member always has a body
    return content.entry_for_file(path, src, mode=member.mode & 0o7777, uid=member.uid, gid=member.gid,
                                  xattrs=_xattrs(member))


def read_tar(open_stream: Opener, content: ContentStore, source: str,
             progress: Progress | None = None) -> list[Entry]:
    """Pass 2: the entries of an archive `check_tar` accepted, file contents stored in `content`."""
    checker = TarChecker(source)
    entries: dict[str, Entry] = {}
    with open_stream() as f, _open(f) as tar:
        for n, member in enumerate(tar, 1):
            path = checker.check(member)
            if member.isreg():
                entries[path] = _file_entry(content, tar, member, path)
            elif member.islnk():
                entries[path] = dataclasses.replace(entries[checker.link_target(member)], path=path)
            elif (e := _entry(member, path)) is not None:
                entries[path] = e
            elif progress:
                progress(f"skipped member {member.name!r}: tar type {member.type!r} is not image content")
            if progress and n % PROGRESS_EVERY == 0:
                progress(f"{n} members...")
    _implied_dirs(entries)
    return list(entries.values())


def tar_entries(open_stream: Opener, content: ContentStore, source: str,
                progress: Progress | None = None) -> list[Entry]:
    """Both passes over an archive that `open_stream` opens afresh each time."""
    try:
        n, acls = check_tar(open_stream, source)
        if progress:
            progress(f"{source}: {n} members checked; storing contents")
            if acls:
                progress(f"{source}: {acls} members carry POSIX ACLs as tar text (SCHILY.acl.*), which are not "
                         "kept; archive with --xattrs instead of --acls to keep them as xattrs")
        return read_tar(open_stream, content, source, progress)
    except UNREADABLE as e:
        raise ImportRefused(f"{source}: not a readable tar archive ({type(e).__name__}: {e or 'cut short'}); "
                            "nothing was imported. Check the file is a whole tar, plain or gz/bz2/xz/zst") from None


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # tarfile reads gz, bz2 and xz itself, not zstd (Python < 3.14)


class _Rewind:
    """Opens the same seekable stream again at its starting offset (and leaves it open), through
    a zstd decompressor if it starts with zstd's magic number."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.start = stream, stream.tell()
        self.zstd = stream.read(4) == ZSTD_MAGIC

    @contextmanager
    def _unzstd(self) -> Iterator[BinaryIO]:
        with zstandard.ZstdDecompressor().stream_reader(self.stream, closefd=False) as f:
            yield f

    def __call__(self) -> AbstractContextManager[BinaryIO]:
        self.stream.seek(self.start)
        return self._unzstd() if self.zstd else nullcontext(self.stream)


def _seekable(stream: BinaryIO) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, ValueError):
        return False


def import_tar(store: ImageStore, stream: BinaryIO, *, name: str | None, source: str = "tar stream",
               progress: Progress | None = None, how: str | None = None) -> Version:
    """Import the tar archive read from `stream` as a new version of image `name` (ImportRefused,
    and nothing stored, for an archive the module docstring refuses)."""
    check_name(name)
    how = how or f"import tar {source}"
    if _seekable(stream):
        with importing(store):
            entries = tar_entries(_Rewind(stream), store.content, source, progress)
            return store.commit(entries, name=name, how=how)
    with tempfile.TemporaryFile(prefix="softudc-tar-") as spool, importing(store):
        if progress:
            progress(f"{source}: spooling the stream to a temporary file (it is read twice)")
        shutil.copyfileobj(stream, spool, 1 << 20)
        spool.seek(0)
        entries = tar_entries(_Rewind(spool), store.content, source, progress)
        return store.commit(entries, name=name, how=how)
