"""Import a directory tree into the image store: one manifest entry per path, contents into the
content store (issue 14, item 2).

The walk never follows a symlink (a symlink is stored as its target string) and never leaves the
tree: `os.scandir` entries are looked at with lstat. Files, directories, symlinks, character and
block devices and fifos become entries with their permission bits, owner and extended
attributes; sockets are skipped (a socket is a running process's endpoint, not image content)
with a progress note. Hard links become separate entries sharing one content digest: the content
is read and stored once per inode, so a thousand links to one file cost one object.

The tree's root itself is the manifest's "/" entry, with the root directory's mode and owner.
Names that are not valid UTF-8 are refused (the manifest format holds UTF-8 paths only): the
error names the path so it can be renamed.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from softudc.images.content import ContentStore
from softudc.images.manifest import Entry
from softudc.images.store import ImageError, ImageStore, Version, split_tag

Progress = Callable[[str], None]
PROGRESS_EVERY = 5000  # entries between two progress lines
# Errors from listxattr/getxattr that mean "this filesystem or file type has none", not a problem.
_NO_XATTRS = {errno.ENOTSUP, errno.EPERM, errno.ENODATA, errno.EOPNOTSUPP}


class ImportRefused(ImageError, ValueError):
    """Input that cannot become an image (the message names the file or member and what to do);
    nothing was committed. An ImageError, so callers and the CLI treat it like the store's own."""


def check_name(name: str | None) -> None:
    """Refuse a bad image name before anything is read or stored (ImageError says what is allowed)."""
    if name is not None:
        if ":" in name:
            raise ImageError(f"image name {name!r}: give a name without a tag (NAME:N is chosen for you)")
        split_tag(name)


@contextmanager
def importing(store: ImageStore) -> Iterator[None]:
    """Around an import's reading, storing and commit: if any of it fails, the writer's lease on
    the content store is dropped (commit drops it on success), so a GC may sweep what it left."""
    try:
        yield
    except BaseException:
        store.content.release_lease()
        raise


def read_xattrs(path: str | Path) -> tuple[tuple[str, str], ...]:
    """The extended attributes of `path` itself (never of a symlink's target), sorted by name, with
    base64 values: the manifest's form."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return ()
        raise
    pairs = []
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno in _NO_XATTRS:  # removed meanwhile, or not readable on this filesystem
                continue
            raise
        pairs.append((name, base64.b64encode(value).decode("ascii")))
    return tuple(sorted(pairs))


def device_field(st: os.stat_result) -> str:
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
    return f"{kind} {os.major(st.st_rdev)} {os.minor(st.st_rdev)}"


def _check_name(fs_path: str) -> None:
    try:
        fs_path.encode("utf-8")
    except UnicodeEncodeError:
        raise ImportRefused(f"{os.fsencode(fs_path)!r}: the name is not valid UTF-8, which a manifest "
                            "cannot hold; rename it (e.g. with convmv) and import again") from None


class TreeWalker:
    """Turns a directory tree into manifest entries, storing file contents as it goes."""

    def __init__(self, content: ContentStore, progress: Progress | None = None) -> None:
        self.content = content
        self.progress = progress
        self.by_inode: dict[tuple[int, int], Entry] = {}  # hard links: the first entry of each inode
        self.count = 0
        self.skipped: list[str] = []

    def _note(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def entry(self, fs_path: str, path: str, st: os.stat_result) -> Entry | None:
        """The entry for one path of the tree (its manifest `path`), or None for a socket."""
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        if stat.S_IFMT(st.st_mode) not in _TYPES:
            self.skipped.append(path)
            self._note(f"skipped {path}: a socket (or unknown file type) is not image content")
            return None
        xattrs = read_xattrs(fs_path)
        if stat.S_ISREG(st.st_mode):
            return self._file(fs_path, path, st, xattrs)
        kind = _TYPES[stat.S_IFMT(st.st_mode)]
        target = os.readlink(fs_path) if kind == "symlink" else ""
        device = device_field(st) if kind == "device" else ""
        return Entry(path=path, type=kind, mode=mode, uid=uid, gid=gid, target=target, device=device,
                     xattrs=xattrs)

    def _file(self, fs_path: str, path: str, st: os.stat_result, xattrs: tuple[tuple[str, str], ...]) -> Entry:
        key = (st.st_dev, st.st_ino)
        first = self.by_inode.get(key) if st.st_nlink > 1 else None
        if first is not None:  # another name of an inode already stored: same content, same metadata
            return dataclasses.replace(first, path=path)
        entry = self.content.entry_for_file(path, Path(fs_path), mode=stat.S_IMODE(st.st_mode),
                                            uid=st.st_uid, gid=st.st_gid, xattrs=xattrs)
        if st.st_nlink > 1:
            self.by_inode[key] = entry
        return entry

    def walk(self, root: Path) -> list[Entry]:
        """Every entry of the tree under `root` ("/" for root itself), depth first."""
        st = os.stat(root)  # the root may be a symlink to the tree (given by the user); nothing below is followed
        if not stat.S_ISDIR(st.st_mode):
            raise ImportRefused(f"{root}: not a directory; import a tree from a directory")
        top = self.entry(str(root), "/", st)
        assert top is not None
        entries = [top]
        for fs_path, path, child_st in _scan(str(root), ""):
            _check_name(fs_path)
            try:
                e = self.entry(fs_path, path, child_st)
            except OSError as err:  # unreadable (permissions), or gone meanwhile
                raise ImportRefused(f"cannot import {fs_path}: {err.strerror} ({err.filename}); nothing was "
                                    "committed") from None
            if e is not None:
                entries.append(e)
                self.count += 1
                if self.count % PROGRESS_EVERY == 0:
                    self._note(f"{self.count} entries...")
        return entries


_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "device",
          stat.S_IFBLK: "device", stat.S_IFIFO: "fifo"}


def _scan(fs_dir: str, prefix: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(filesystem path, manifest path, lstat) of everything under fs_dir, depth first; a
    directory comes before its contents."""
    with os.scandir(fs_dir) as it:
        children = sorted(it, key=lambda d: d.name)
    for d in children:
        st = d.stat(follow_symlinks=False)
        path = f"{prefix}/{d.name}"
        yield d.path, path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _scan(d.path, path)


def tree_entries(content: ContentStore, root: Path, progress: Progress | None = None) -> list[Entry]:
    """The manifest entries of the tree at `root`, its file contents stored in `content`."""
    return TreeWalker(content, progress).walk(root)


def import_tree(store: ImageStore, path: Path, *, name: str | None, progress: Progress | None = None,
                how: str | None = None) -> Version:
    """Import the directory tree at `path` as a new version of image `name` (untagged if None)."""
    check_name(name)
    with importing(store):
        entries = TreeWalker(store.content, progress).walk(Path(path))
        if progress:
            progress(f"{len(entries)} entries read from {path}; committing")
        return store.commit(entries, name=name, how=how or f"import tree {os.path.abspath(path)}")
