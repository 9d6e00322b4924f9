"""A .deb read for patching an image by manifest (deb(5); python-debian's DebFile reads the ar
archive, control.tar.* and data.tar.*): its control fields, the control-area files dpkg keeps
under /var/lib/dpkg/info, and its data members as manifest entries whose contents go straight
into the content store. Nothing is unpacked to disk and no maintainer script runs."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from debian.arfile import ArError
from debian.deb822 import Deb822
from debian.debfile import DebError, DebFile

from softudc.images.dpkg import NAME_RE
from softudc.images.manifest import Entry

if TYPE_CHECKING:
    from softudc.images.content import ContentStore

# The control-area files dpkg keeps as /var/lib/dpkg/info/<package>.<name> (dpkg's "control info
# files"); `list` is written by dpkg itself. Only these names are ever removed for a package, so
# "libgtk2" never touches "libgtk2.0-0.list".
INFO_FILES = ("conffiles", "config", "md5sums", "postinst", "postrm", "preinst", "prerm", "shlibs",
              "symbols", "templates", "triggers")
SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")


class PatchError(ValueError):
    """A .deb or a patch that cannot be applied; the message names the file and what to do."""


@dataclass
class DebMember:
    """One member of data.tar: its path in the image (normalised, as dpkg's .list writes it) and
    what it becomes; a hard link names the path whose entry it copies."""

    path: str
    entry: Entry | None          # None for a hard link
    link_to: str = ""
    md5: str = ""                # regular files: dpkg's md5 (conffiles are recorded with it)


@dataclass
class DebPackage:
    path: Path
    control: Deb822
    info: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # INFO_FILES name -> (bytes, mode)

    @property
    def name(self) -> str:
        return str(self.control.get("Package", ""))

    @property
    def version(self) -> str:
        return str(self.control.get("Version", ""))

    @property
    def architecture(self) -> str:
        return str(self.control.get("Architecture", ""))

    @property
    def multi_arch(self) -> str:
        return str(self.control.get("Multi-Arch", ""))

    @property
    def conffiles(self) -> list[str]:
        data = self.info.get("conffiles", (b"", 0))[0]
        return [line.split()[-1] for line in data.decode("utf-8", errors="replace").splitlines()
                if line.strip() and not line.startswith("remove-on-upgrade")]

    @property
    def scripts(self) -> list[str]:
        return [s for s in SCRIPTS if s in self.info]

    def info_stem(self) -> str:
        return f"{self.name}:{self.architecture}" if self.multi_arch == "same" else self.name


def _control_tar_name(name: str) -> str:
    return name.removeprefix("./")


def read_deb(path: Path) -> DebPackage:
    """A .deb's control area; PatchError names the file when it is not a readable package."""
    try:
        deb = DebFile(str(path))
        control = deb.debcontrol()
        info: dict[str, tuple[bytes, int]] = {}
        tar = deb.control.tgz()
        for m in tar.getmembers():
            name = _control_tar_name(str(m.name))
            if name in INFO_FILES and m.isreg():
                f = tar.extractfile(m)
                info[name] = (f.read() if f else b"", m.mode & 0o7777)
        deb.close()
    except (OSError, ArError, DebError, tarfile.TarError, KeyError, ValueError) as e:
        raise PatchError(f"{path}: not a readable .deb ({e}); give a Debian binary package file") from None
    pkg = DebPackage(path, control, info)
    if not NAME_RE.match(pkg.name) or not pkg.version or not pkg.architecture:
        raise PatchError(f"{path}: its control file lacks a valid Package, Version or Architecture field")
    return pkg


def member_path(name: str, deb: Path) -> str:
    """'./usr/bin/x' -> '/usr/bin/x' ('./' -> '/'); refuses '..' and odd names."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or "\0" in name:
        raise PatchError(f"{deb}: data.tar member {name!r} leaves the tree; refusing this package")
    return "/" + "/".join(parts)


def _kind(m: tarfile.TarInfo, path: str, deb: Path) -> Entry | None:
    mode, uid, gid = m.mode & 0o7777, m.uid, m.gid
    if m.isdir():
        return Entry(path, "dir", mode, uid, gid)
    if m.issym():
        return Entry(path, "symlink", 0o777, uid, gid, target=m.linkname)
    if m.ischr() or m.isblk():
        return Entry(path, "device", mode, uid, gid, device=f"{'c' if m.ischr() else 'b'} {m.devmajor} {m.devminor}")
    if m.isfifo():
        return Entry(path, "fifo", mode, uid, gid)
    raise PatchError(f"{deb}: data.tar member {m.name!r} has a type dpkg does not install")


def _file(pkg: DebPackage, content: ContentStore, tar: tarfile.TarFile, m: tarfile.TarInfo, path: str,
          conffiles: set[str]) -> DebMember:
    """A regular file, streamed into the store; a conffile is read whole for its md5 (small)."""
    f = tar.extractfile(m)
    if f is None:
        raise PatchError(f"{pkg.path}: data.tar member {m.name!r} cannot be read")
    mode, md5 = m.mode & 0o7777, ""
    src: IO[bytes] = f
    if path in conffiles:
        data = f.read()
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        src = io.BytesIO(data)
    return DebMember(path, content.entry_for_file(path, src, mode=mode, uid=m.uid, gid=m.gid), md5=md5)


def members(pkg: DebPackage, content: ContentStore) -> Iterator[DebMember]:
    """The data.tar members in archive order (parents before children), file contents stored."""
    conffiles = set(pkg.conffiles)
    try:
        deb = DebFile(str(pkg.path))
        tar = deb.data.tgz()
        for m in tar:
            path = member_path(str(m.name), pkg.path)
            if m.islnk():
                yield DebMember(path, None, link_to=member_path(m.linkname, pkg.path))
            elif m.isreg():
                yield _file(pkg, content, tar, m, path, conffiles)
            else:
                yield DebMember(path, _kind(m, path, pkg.path))
        deb.close()
    except (OSError, ArError, DebError, tarfile.TarError) as e:
        raise PatchError(f"{pkg.path}: cannot read its data.tar ({e}); is the file complete?") from None
