"""Build a Debian image with debootstrap, cached (issue 14, item 2): `softudc image build web
--debootstrap bookworm --packages nginx` gives tests and the demo real images with real package
databases.

debootstrap runs as root into a temporary directory beside the cache, from the Debian mirror
this machine's apt already uses (read from /etc/apt/sources.list and sources.list.d: a mirror
is never hard-coded, so a machine on a local mirror or a snapshot builds from it). The
downloaded .debs and apt lists are removed from the tree (they are not the image and would
double its size), and the tree is kept as a tar.zst in the cache, keyed by what determines its
packages: suite, variant, the sorted extra packages, debootstrap's version and the architecture.
The image is then imported from that tar (importtar.py), both on a cold build and on a cached
one, so the two give the same manifest and a cached build takes seconds. The cache is keyed by
request, not by date: delete the file (or the cache directory) to pick up newer packages.

The temporary directory is removed whatever happens, after unmounting anything debootstrap left
mounted in it (it mounts /proc and /sys in the target while packages configure).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

import zstandard
from debian.deb822 import Deb822

from softudc.images.importtar import tar_entries
from softudc.images.importtree import ImportRefused, Progress, check_name, importing
from softudc.images.store import ImageStore, Version

APT_DIR = Path("/etc/apt")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
_SUITE = re.compile(r"[a-z0-9][a-z0-9.-]*")
VARIANTS = ("minbase", "buildd", "fakechroot", "-")  # "-": debootstrap's default (required + important)
ZSTD_LEVEL = 6
BUILD_RECORDS = ("var/log/bootstrap.log", "var/cache/ldconfig/aux-cache")
EMPTIED_LOGS = ("var/log/dpkg.log", "var/log/alternatives.log", "var/log/apt/history.log", "var/log/apt/term.log")
WORK_PREFIX = "softudc-debootstrap-"
TREE_FORMAT = 2  # in the cache key: bump when slim() changes, so older cached trees are not reused


def _sources(apt_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of every enabled "deb" source apt knows, in apt's reading order."""
    one = apt_dir / "sources.list"
    listed = [one] if one.is_file() else []
    parts = apt_dir / "sources.list.d"
    listed += sorted(parts.glob("*.list")) + sorted(parts.glob("*.sources")) if parts.is_dir() else []
    for f in listed:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for para in Deb822.iter_paragraphs(text.splitlines()):
                if "deb" in para.get("Types", "").split() and para.get("Enabled", "yes").lower() != "no":
                    for uri in para.get("URIs", "").split():
                        yield uri, para.get("Suites", "").split()
            continue
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()  # drop [arch=... signed-by=...]
            if len(words) >= 3 and words[0] == "deb":
                yield words[1], [words[2]]


def debian_mirror(suite: str, apt_dir: Path = APT_DIR) -> str:
    """The mirror apt uses for `suite`, else for any main suite (one without "-updates" and the
    like); ImportRefused naming the files read when there is none."""
    sources = list(_sources(apt_dir))
    for uri, suites in sources:
        if suite in suites:
            return uri
    for uri, suites in sources:
        if any("-" not in s and "/" not in s for s in suites) and not uri.rstrip("/").endswith("-security"):
            return uri
    raise ImportRefused(f"no Debian mirror in {apt_dir}/sources.list or {apt_dir}/sources.list.d; "
                        "add one (e.g. a 'deb' line for your mirror) and build again")


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise ImportRefused(f"`{' '.join(argv)}` failed: install debootstrap (scripts/bootstrap.sh does)") from None


def cache_key(suite: str, variant: str, packages: Sequence[str], debootstrap: str, arch: str) -> str:
    request = {"suite": suite, "variant": variant, "packages": sorted(set(packages)),
               "debootstrap": debootstrap, "arch": arch, "format": TREE_FORMAT}
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]


def check_request(suite: str, variant: str, packages: Sequence[str]) -> None:
    if not _SUITE.fullmatch(suite):
        raise ImportRefused(f"suite {suite!r}: not a Debian suite name (bookworm, trixie, stable...)")
    if variant not in VARIANTS:
        raise ImportRefused(f"variant {variant!r}: debootstrap knows {', '.join(VARIANTS)}")
    for p in packages:
        if not _PACKAGE.fullmatch(p):
            raise ImportRefused(f"package {p!r}: not a Debian package name (lowercase letters, digits, + - .)")


def how(suite: str, variant: str, packages: Sequence[str]) -> str:
    extra = f" +{','.join(sorted(set(packages)))}" if packages else ""
    return f"build {suite} {variant}{extra}"


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    inside = [p for p in points if p == str(root) or p.startswith(f"{root}/")]
    return sorted(inside, key=len, reverse=True)  # deepest first


def remove_tree(root: Path) -> None:
    """Remove a debootstrap work directory, unmounting first whatever is still mounted in it (never
    delete through a mounted /proc or /sys)."""
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_under(root):
        raise ImportRefused(f"{root}: still has mounts after umount; remove them, then the directory")
    shutil.rmtree(root, ignore_errors=True)


def slim(tree: Path) -> None:
    """Remove what apt downloaded and can download again (the .debs and the package lists), and
    what only records when the build ran: debootstrap's log, ldconfig's aux-cache (inode numbers
    and times; ldconfig rebuilds it) and the contents of dpkg's and update-alternatives' logs
    (kept, empty). Two cold builds of one request against one mirror state then give the same
    manifest, so the same version."""
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    lists = tree / "var/lib/apt/lists"
    for p in lists.iterdir() if lists.is_dir() else []:
        if p.is_file() or p.is_symlink():
            p.unlink()
    for gone in BUILD_RECORDS:
        (tree / gone).unlink(missing_ok=True)
    for log in EMPTIED_LOGS:
        if (tree / log).is_file():
            (tree / log).write_bytes(b"")


def _debootstrap(argv: list[str], target: Path, progress: Progress | None) -> None:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    last: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        last = [*last[-4:], line.rstrip()]
        if progress:
            progress(f"debootstrap: {line.rstrip()}")
    if proc.wait() != 0:
        log = target / "debootstrap" / "debootstrap.log"
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.is_file() else last
        raise ImportRefused(f"debootstrap failed (status {proc.returncode}): {' | '.join(tail)}; check the "
                            "suite and package names and that the mirror is reachable")


def _write_tar(tree: Path, dest: Path) -> None:
    """tree -> dest as tar.zst, written beside dest and renamed (a half file is never a cache hit)."""
    partial = dest.with_name(dest.name + ".partial")
    tar = subprocess.Popen(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--sort=name",
                            "-C", str(tree), "-cf", "-", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    with open(partial, "wb") as out:
        zstandard.ZstdCompressor(level=ZSTD_LEVEL).copy_stream(tar.stdout, out)
        out.flush()
        os.fsync(out.fileno())
    if tar.wait() != 0:
        partial.unlink(missing_ok=True)
        raise ImportRefused(f"tar of the debootstrap tree {tree} failed (status {tar.returncode})")
    partial.rename(dest)


def bootstrap_to_cache(dest: Path, suite: str, variant: str, packages: Sequence[str], mirror: str,
                       progress: Progress | None = None) -> None:
    """Run debootstrap and keep its slimmed tree as the tar.zst `dest`."""
    if os.geteuid() != 0:
        raise ImportRefused("building an image runs debootstrap, which needs root: run as root (sudo)")
    remove_stale_work(dest.parent, progress)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=dest.parent))
    held = open(work / ".in-use", "w")  # noqa: SIM115 - held (flocked) until the work directory goes
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        target = work / "root"
        include = [f"--include={','.join(sorted(set(packages)))}"] if packages else []
        variant_arg = [f"--variant={variant}"] if variant != "-" else []
        argv = ["debootstrap", *variant_arg, *include, suite, str(target), mirror]
        if progress:
            progress(f"{' '.join(argv)}")
        _debootstrap(argv, target, progress)
        slim(target)
        _write_tar(target, dest)
    finally:
        held.close()
        remove_tree(work)


def remove_stale_work(cache: Path, progress: Progress | None = None) -> None:
    """Remove the work directories that builds killed before their cleanup left in `cache` (a
    whole Debian tree each, maybe with /proc still mounted in it). A live build holds a flock on
    its directory's .in-use file, so only the dead ones are taken."""
    for work in cache.glob(f"{WORK_PREFIX}*"):
        try:
            with open(work / ".in-use", "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a build in progress
        except OSError:
            pass  # no .in-use file: killed before it made one
        if progress:
            progress(f"removing {work}, left by a build that did not finish")
        remove_tree(work)


def cached_tree(cache: Path, suite: str, variant: str = "minbase", packages: Sequence[str] = ()) -> Path:
    """Where the tree of this request is (or will be) kept in `cache`: a tar.zst."""
    version = _output(["debootstrap", "--version"]).split()[-1]
    arch = _output(["dpkg", "--print-architecture"])
    key = cache_key(suite, variant, packages, version, arch)
    return cache / f"{suite}-{variant.strip('-') or 'default'}-{key}.tar.zst"


def _zst_opener(path: Path) -> AbstractContextManager[BinaryIO]:
    @contextmanager
    def opened() -> Iterator[BinaryIO]:
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as f:
            yield f
    return opened()


def build_debian(store: ImageStore, name: str | None, *, suite: str = "bookworm", packages: Sequence[str] = (),
                 variant: str = "minbase", cache_dir: Path | None = None, progress: Progress | None = None,
                 apt_dir: Path = APT_DIR) -> Version:
    """A Debian `suite` image (debootstrap `variant` plus `packages`) as a new version of `name`."""
    check_name(name)
    check_request(suite, variant, packages)
    cache = Path(cache_dir) if cache_dir else store.root / "cache" / "debootstrap"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cached_tree(cache, suite, variant, packages)
    with open(tarball.with_name(tarball.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one debootstrap per request: a second build waits, then hits the cache
        if tarball.is_file():
            if progress:
                progress(f"cached: {tarball}")
        else:
            bootstrap_to_cache(tarball, suite, variant, packages, debian_mirror(suite, apt_dir), progress)
    with importing(store):
        entries = tar_entries(lambda: _zst_opener(tarball), store.content, str(tarball), progress)
        return store.commit(entries, name=name, how=how(suite, variant, packages))
