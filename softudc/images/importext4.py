"""Read an ext2/3/4 filesystem held in a file into manifest entries, with e2fsprogs' debugfs and
without mounting anything (issue 14, item 2).

debugfs opens the filesystem image read-only and runs a command file (`debugfs -f CMDS IMAGE`),
echoing each command as "debugfs: CMD" before its output, so one run answers many questions:

- the tree, level by level: `ls -p <INO>` for every directory of a level prints one line per
  name, "/INO/MODE/UID/GID/NAME/SIZE/" (MODE in octal with the type bits; SIZE empty for
  directories), so a whole image takes as many runs as it has directory levels;
- file contents: `dump <INO> TMP/INO` once per inode (hard links share it), in batches of at
  most BATCH_BYTES so a big image never needs its whole size in temporary space;
- symlink targets: `rdump <INO> TMP` recreates the link as TMP/<INO> (fast links live in the
  inode, slow ones in a block: rdump reads both), then os.readlink;
- device numbers: `stat <INO>` ("Device major/minor number: 01:03");
- extended attributes: `ea_list <INO>` for the names, `ea_get -f FILE <INO> NAME` for the raw
  values (ACLs come out in the Linux xattr form, as getxattr gives them). "system.data" is
  ext4's inline-data storage, not an attribute, and is left out.

Inodes are named by number ("<INO>") in every command, so no path ever needs quoting. debugfs
exits 0 even when a command fails, so anything it prints on stderr but its version banner is an
error (a truncated image, a bad superblock): ImportRefused naming the image and debugfs's words.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from softudc.images.content import ContentStore
from softudc.images.importtree import ImportRefused, Progress
from softudc.images.manifest import Entry

BATCH_BYTES = 256 << 20  # file contents dumped per debugfs run before they are stored and removed
ROOT_INO = 2  # ext2/3/4's root directory inode
_LS_LINE = re.compile(rb"/(\d+)/([0-7]+)/(-?\d+)/(-?\d+)/([^/]*)/(\d*)/\n")
_DEVICE = re.compile(r"Device major/minor number: (\d+):(\d+)")
_EA_NAME = re.compile(rb"^  (.+?) \(\d+\)(?: = |$)", re.M)  # "  NAME (LEN) = VALUE", or no value
_EA_ESCAPE = re.compile(rb'\\(\\|"|[0-7]{3})')  # how ea_list prints a quote, a backslash, other bytes
_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "device",
          stat.S_IFBLK: "device", stat.S_IFIFO: "fifo"}


@dataclass(frozen=True)
class Node:
    """One name in the filesystem, as `ls -p` lists it."""

    path: str
    ino: int
    mode: int  # with the type bits
    uid: int
    gid: int
    size: int

    @property
    def kind(self) -> str | None:
        return _TYPES.get(stat.S_IFMT(self.mode))


def run_debugfs(image: str, commands: list[str], source: str) -> list[bytes]:
    """Each command's output (stdout), in order; ImportRefused if debugfs complains on stderr."""
    if not commands:
        return []
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", prefix="softudc-debugfs-", suffix=".cmds") as f:
        f.write("".join(c + "\n" for c in commands))
        f.flush()
        try:
            done = subprocess.run(["debugfs", "-f", f.name, image], capture_output=True, check=False)
        except FileNotFoundError:
            raise ImportRefused("debugfs is not installed: install e2fsprogs (scripts/bootstrap.sh does)") from None
    problems = [line for line in done.stderr.decode(errors="replace").splitlines()
                if line.strip() and not line.startswith("debugfs ") and not line.startswith("\tUsing EXT2FS")]
    if done.returncode != 0 or problems:
        why = "; ".join(problems[:3]) or f"exit status {done.returncode}"
        raise ImportRefused(f"{source}: cannot read it as an ext2/3/4 filesystem: debugfs: {why}; "
                            "check that the file is a whole, unmodified ext4 image")
    return _sections(done.stdout, len(commands), source)


def _sections(out: bytes, n: int, source: str) -> list[bytes]:
    parts = re.split(rb"^debugfs: [^\n]*\n", out, flags=re.M)
    if len(parts) != n + 1:
        raise ImportRefused(f"{source}: debugfs printed {len(parts) - 1} answers to {n} commands; "
                            "a file name holding 'debugfs: ' after a newline is not supported")
    return parts[1:]


def ea_unescape(printed: bytes) -> bytes:
    """An attribute name as `ea_list` prints it (\\" for a quote, \\\\ for a backslash, \\ooo in
    octal for other bytes that are not printable) back to its bytes."""
    return _EA_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]) if len(m[1]) == 3 else m[1], printed)


def ea_quote(name: str) -> str:
    """`name` as one argument of a debugfs command: in double quotes, a quote doubled."""
    return '"' + name.replace('"', '""') + '"'


def parse_ls(section: bytes, parent: str, source: str) -> list[Node]:
    """The names of one `ls -p` answer but "." and "..", as nodes below `parent`."""
    nodes, pos = [], 0
    for m in _LS_LINE.finditer(section):
        if m.start() != pos:
            break
        pos = m.end()
        raw = m.group(5)
        if raw in (b".", b"..") or m.group(1) == b"0":  # inode 0: an unused slot (lost+found has many)
            continue
        name = raw.decode("utf-8", "surrogateescape")
        path = f"{parent.rstrip('/')}/{name}"
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise ImportRefused(f"{source}: {raw!r} in {parent}: the name is not valid UTF-8, which a "
                                "manifest cannot hold") from None
        ino, mode, uid, gid = (int(m.group(1)), int(m.group(2), 8), int(m.group(3)), int(m.group(4)))
        nodes.append(Node(path, ino, mode, uid, gid, int(m.group(6) or 0)))
    if section[pos:].strip():
        raise ImportRefused(f"{source}: cannot parse debugfs's listing of {parent} near "
                            f"{section[pos:pos + 60]!r}")
    return nodes


class Ext4Reader:
    """Reads one filesystem image (a path debugfs opens, "file?offset=N" for a partition)."""

    def __init__(self, image: str, source: str, progress: Progress | None = None) -> None:
        self.image, self.source, self.progress = image, source, progress

    def _note(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def debugfs(self, commands: list[str]) -> list[bytes]:
        return run_debugfs(self.image, commands, self.source)

    def root(self) -> Node:
        """The root directory itself (its "." line)."""
        section = self.debugfs([f"ls -p <{ROOT_INO}>"])[0]
        m = _LS_LINE.match(section)
        if not m:
            raise ImportRefused(f"{self.source}: debugfs did not list the root directory")
        return Node("/", ROOT_INO, int(m.group(2), 8), int(m.group(3)), int(m.group(4)), 0)

    def nodes(self) -> list[Node]:
        """Every name in the filesystem, the root first, level by level."""
        root = self.root()
        found, level, seen = [root], [root], {ROOT_INO}
        while level:
            answers = self.debugfs([f"ls -p <{d.ino}>" for d in level])
            below = [n for d, answer in zip(level, answers, strict=True)
                     for n in parse_ls(answer, d.path, self.source)]
            found.extend(below)
            level = [n for n in below if n.kind == "dir" and n.ino not in seen]
            seen.update(n.ino for n in level)
            self._note(f"{len(found)} names listed...")
        return found

    def devices(self, nodes: list[Node]) -> dict[int, str]:
        devs = [n for n in nodes if n.kind == "device"]
        out = {}
        for n, answer in zip(devs, self.debugfs([f"stat <{n.ino}>" for n in devs]), strict=True):
            m = _DEVICE.search(answer.decode(errors="replace"))
            if not m:
                raise ImportRefused(f"{self.source}: {n.path}: debugfs shows no device number")
            kind = "c" if stat.S_ISCHR(n.mode) else "b"
            out[n.ino] = f"{kind} {int(m.group(1))} {int(m.group(2))}"
        return out

    def xattrs(self, nodes: list[Node], tmp: Path) -> dict[int, tuple[tuple[str, str], ...]]:
        path_of = {n.ino: n.path for n in nodes}
        inodes = sorted(path_of)
        answers = self.debugfs([f"ea_list <{ino}>" for ino in inodes])
        wanted = [(ino, self._ea_name(printed, path_of[ino])) for ino, answer in zip(inodes, answers, strict=True)
                  for printed in _EA_NAME.findall(answer)]
        wanted = [(ino, name) for ino, name in wanted if name != "system.data"]
        self.debugfs([f"ea_get -f {tmp}/ea{i} <{ino}> {ea_quote(name)}" for i, (ino, name) in enumerate(wanted)])
        out: dict[int, list[tuple[str, str]]] = {}
        for i, (ino, name) in enumerate(wanted):
            value = (tmp / f"ea{i}").read_bytes()
            out.setdefault(ino, []).append((name, base64.b64encode(value).decode("ascii")))
        return {ino: tuple(sorted(pairs)) for ino, pairs in out.items()}

    def _ea_name(self, printed: bytes, path: str) -> str:
        name = ea_unescape(printed)
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if not text or "\n" in text:
            raise ImportRefused(f"{self.source}: {path}: extended attribute {name!r} has a name a manifest "
                                "(or debugfs's command line) cannot hold")
        return text

    def symlinks(self, nodes: list[Node], tmp: Path) -> dict[int, str]:
        links = sorted({n.ino for n in nodes if n.kind == "symlink"})
        (tmp / "links").mkdir()
        self.debugfs([f"rdump <{ino}> {tmp}/links" for ino in links])
        return {ino: os.readlink(tmp / "links" / f"<{ino}>") for ino in links}  # not Path.readlink: it normalises

    def file_batches(self, nodes: list[Node], tmp: Path) -> Iterator[dict[int, Path]]:
        """The contents of the files, one dump per inode, in batches of about BATCH_BYTES; each
        batch's files are removed once the caller has moved on to the next."""
        files: dict[int, Node] = {}
        for n in nodes:
            if n.kind == "file":
                files.setdefault(n.ino, n)
        batch: list[Node] = []
        pending = 0
        todo = list(files.values())
        for i, n in enumerate(todo):
            batch.append(n)
            pending += n.size
            if i == len(todo) - 1 or pending >= BATCH_BYTES:
                self.debugfs([f"dump <{b.ino}> {tmp}/f{b.ino}" for b in batch])
                dumped = {b.ino: tmp / f"f{b.ino}" for b in batch}
                for b in batch:
                    # The inode's size is the file's: debugfs 1.47 dumps an inline-data file's whole
                    # 60-byte area (an empty file comes out as 60 zero bytes), and a trailing hole
                    # may come out short.
                    os.truncate(dumped[b.ino], b.size)
                yield dumped
                for p in dumped.values():
                    p.unlink(missing_ok=True)
                batch, pending = [], 0

    def entries(self, content: ContentStore) -> list[Entry]:
        """The manifest entries of the whole filesystem, file contents stored in `content`."""
        nodes = self.nodes()
        for n in nodes:
            if n.kind is None:
                self._note(f"skipped {n.path}: a socket (or unknown file type) is not image content")
        nodes = [n for n in nodes if n.kind is not None]
        with tempfile.TemporaryDirectory(prefix="softudc-ext4-") as t:
            tmp = Path(t)
            devices, targets, xattrs = self.devices(nodes), self.symlinks(nodes, tmp), self.xattrs(nodes, tmp)
            stored: dict[int, Entry] = {}
            for dumped in self.file_batches(nodes, tmp):
                for n in nodes:
                    if n.ino in dumped and n.ino not in stored:
                        stored[n.ino] = content.entry_for_file(n.path, dumped[n.ino], mode=stat.S_IMODE(n.mode),
                                                               uid=n.uid, gid=n.gid, xattrs=xattrs.get(n.ino, ()))
                self._note(f"{len(stored)} files stored...")
        return [_entry(n, stored, devices, targets, xattrs) for n in nodes]


def _entry(n: Node, stored: dict[int, Entry], devices: dict[int, str], targets: dict[int, str],
           xattrs: dict[int, tuple[tuple[str, str], ...]]) -> Entry:
    if n.kind == "file":
        return dataclasses.replace(stored[n.ino], path=n.path)
    assert n.kind is not None
    return Entry(path=n.path, type=n.kind, mode=stat.S_IMODE(n.mode), uid=n.uid, gid=n.gid,
                 target=targets.get(n.ino, ""), device=devices.get(n.ino, ""), xattrs=xattrs.get(n.ino, ()))


def ext4_entries(image: str, content: ContentStore, source: str, progress: Progress | None = None) -> list[Entry]:
    """The manifest entries of the ext2/3/4 filesystem debugfs opens as `image`."""
    return Ext4Reader(image, source, progress).entries(content)
