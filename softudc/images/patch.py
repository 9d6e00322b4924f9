"""`softudc image patch`: a package upgrade applied to a manifest, as dpkg would unpack it but
without booting, mounting or copying the unchanged content. The new version has

- the new package's files (data.tar), each put in the content store once; paths are placed
  through the image's own directory symlinks (a bookworm deb ships /lib/x while the image keeps
  it at /usr/lib/x behind /lib -> usr/lib, as dpkg would find it on disk);
- none of the old version's files that the new one no longer ships (from the image's
  /var/lib/dpkg/info/<package>.list), except obsolete conffiles, which dpkg keeps too;
- its /var/lib/dpkg/status paragraph, info/<package>.list, .md5sums and the other control-area
  files of the new package (old ones it no longer has removed).

Conffiles: one the image has modified (its md5 differs from the one the status file recorded
for the shipped version) is kept, the new version's file is not installed — what
`dpkg --force-confold` does unattended; an unmodified one is replaced. Either way the status
records the new shipped md5, as dpkg does, so the next upgrade still sees the modification.

Diversions (dpkg-divert) are followed: a file another package diverted lands at the diverted-to
path, as dpkg would put it. Maintainer scripts are NOT run (no boot, no chroot): the version's
`how` says so, and a warning names the scripts of each package that had some; so triggers do not
run either, and alternatives stay as they were.

A package the image does not have (or only its config files: state config-files) is installed
only when asked (install=True, `--install`): its paragraph goes where dpkg keeps it, in name
order. Refused, before anything is stored: a .deb of another architecture, a package the image
does not have (without install), the version it already has, a downgrade unless
allow_downgrade, and a set of .debs that would leave a dependency unmet or hit a Breaks or
Conflicts (depends.py) unless force_depends (nginx 1.22.1-9+deb12u9 depends on nginx-common
(<< 1.22.1-9+deb12u9.1~): patch both at once). The old version is never changed (versions are
immutable)."""

from __future__ import annotations

import hashlib
import io
import posixpath
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from debian.deb822 import Deb822
from debian.debian_support import Version

from softudc.images import depends, dpkg
from softudc.images.debpackage import INFO_FILES, DebMember, DebPackage, PatchError, members, read_deb
from softudc.images.dpkgwrite import diversions, statoverrides, status_paragraph, with_paragraph
from softudc.images.importtree import importing
from softudc.images.lookup import resolve
from softudc.images.manifest import Entry, index

if TYPE_CHECKING:
    from softudc.images.content import ContentStore
    from softudc.images.store import ImageStore
    from softudc.images.store import Version as ImageVersion

Progress = Callable[[str], None]

NOT_RUN = "maintainer scripts not run"
DIVERSIONS = "/var/lib/dpkg/diversions"
STATOVERRIDE = "/var/lib/dpkg/statoverride"
DPKG_NEW = ".dpkg-new"  # where dpkg --unpack leaves a new conffile until configure


class AlreadyCurrent(PatchError):
    """The image already has this version (patch_all skips such images)."""


class Downgrade(PatchError):
    """The .deb is older than the image's package (refused unless allow_downgrade)."""


@dataclass
class Tree:
    """The new version's entries while they are being patched, by path."""

    entries: dict[str, Entry]
    content: ContentStore
    notes: list[str] = field(default_factory=list)
    divert: dict[str, str] = field(default_factory=dict)  # the package at work's diverted paths
    overrides: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # dpkg-statoverride's

    def overridden(self, e: Entry) -> Entry:
        """`e` with the owner and mode dpkg-statoverride records for its path, if any."""
        o = self.overrides.get(e.path)
        return e if o is None or e.type == "symlink" else replace(e, uid=o[0], gid=o[1], mode=o[2])

    def read(self, path: str) -> bytes | None:
        e = resolve(self.entries, path)
        return self.content.read(e) if e is not None and e.type == "file" else None

    def physical(self, path: str, deb: Path) -> str:
        """Where `path` lands in the image: diverted (dpkg-divert) if another package said so, its
        directory looked up through the image's symlinks."""
        if path == "/":
            return "/"
        path = self.divert.get(path, path)
        parent, base = path.rsplit("/", 1)
        d = resolve(self.entries, parent or "/")
        if d is None or d.type != "dir":
            raise PatchError(f"{deb}: {path}: {parent or '/'} is not a directory in the image; "
                             "the package cannot be unpacked there")
        return posixpath.join(d.path, base)

    def put_bytes(self, path: str, data: bytes, like: Entry | None = None, mode: int = 0o644) -> None:
        digest, size, chunks = self.content.put_file(io.BytesIO(data))
        base = like or Entry(path, "file", mode)
        self.entries[path] = replace(base, path=path, type="file", size=size, digest=digest, chunks=chunks,
                                     target="", device="")

    def remove_unused(self, paths: list[str], keep: set[str]) -> None:
        """Removes files and symlinks among `paths`, then the directories among them left empty."""
        dirs = []
        for p in paths:
            e = self.entries.get(p)
            if e is None or p in keep:
                continue
            if e.type == "dir":
                dirs.append(p)
            else:
                del self.entries[p]
        kids = Counter(posixpath.dirname(p) for p in self.entries if p != "/")
        for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):  # deepest first
            if kids[d] == 0 and d != "/":
                del self.entries[d]
                kids[posixpath.dirname(d)] -= 1


@dataclass(frozen=True)
class Allow:
    """What a patch may do beyond upgrading installed packages to newer versions."""

    downgrade: bool = False   # install a version older than the image's
    depends: bool = False     # leave a dependency unmet or a Breaks/Conflicts hit
    install: bool = False     # install a package the image does not have


def target_paragraph(pkgs: list[dpkg.Package], deb: DebPackage, allow: Allow = Allow()) -> dpkg.Package:
    """The image's paragraph this .deb replaces: the installed package's; with allow.install, a
    config-files one, or a placeholder (start = end = -1) for a package new to the image.
    PatchError for another architecture, or a package not installed without allow.install."""
    native = dpkg.native_arch(pkgs)
    if deb.architecture not in ("all", native):
        raise PatchError(f"{deb.path}: built for {deb.architecture}, the image is {native or 'of no known'} "
                         f"architecture; give the {native} build of {deb.name}")
    mine = [p for p in pkgs if p.name == deb.name and
            (p.architecture in (deb.architecture, "all") or deb.architecture == "all")]
    have = [p for p in mine if p.state not in ("not-installed", "config-files")]
    if have:
        return have[0]
    if not allow.install:
        raise PatchError(f"{deb.path}: the image does not have {deb.name} installed; patch upgrades installed "
                         "packages (give --install to add it; `softudc image search --package NAME` finds images)")
    return mine[0] if mine else dpkg.Package(deb.name, "", deb.architecture, "install", "not-installed", start=-1,
                                              end=-1)


def check_version(old: dpkg.Package, deb: DebPackage, allow: Allow = Allow()) -> None:
    if old.state in ("not-installed", "config-files"):
        return
    new, cur = Version(deb.version), Version(old.version)
    if new == cur:
        raise AlreadyCurrent(f"{deb.path}: the image already has {deb.name} {old.version}")
    if new < cur and not allow.downgrade:
        raise Downgrade(f"{deb.path}: {deb.name} {deb.version} is older than the image's {old.version}; "
                        "give --allow-downgrade to install it anyway")


def _conffile_kept(tree: Tree, phys: str, recorded: str | None) -> bool:
    """Whether the image's own copy of a conffile was modified since its package shipped it."""
    if recorded is None:
        return False
    current = tree.read(phys)
    return current is not None and hashlib.md5(current, usedforsecurity=False).hexdigest() != recorded


def _place_link_or_dir(tree: Tree, deb: DebPackage, m: DebMember, phys: str, here: Entry | None) -> None:
    if m.entry is None:  # a hard link: same content as the member it names
        src = tree.entries.get(tree.physical(m.link_to, deb.path))
        if src is None:
            raise PatchError(f"{deb.path}: hard link {m.path} names {m.link_to}, which the package lacks")
        tree.entries[phys] = replace(src, path=phys)
    elif here is None:
        tree.entries[phys] = tree.overridden(replace(m.entry, path=phys))
    # else: an existing directory keeps its mode and owner, and a symlink to a directory stays
    # (usrmerge: /lib -> usr/lib), as dpkg leaves them


def _unpack(tree: Tree, deb: DebPackage, old: dpkg.Package, own: set[str],
            unpacked: bool) -> tuple[list[str], list[str], set[str]]:
    """Puts the .deb's members into the tree; (paths as the .list records them, Conffiles lines,
    the paths it overwrote that were not the package's own before: `own`)."""
    recorded = dict(old.conffiles)
    listed, conf_lines = ["/."], []
    foreign = set()
    for m in members(deb, tree.content):
        if m.path != "/":
            listed.append(m.path)
        phys = tree.physical(m.path, deb.path)
        here = tree.entries.get(phys)
        if m.entry is None or m.entry.type == "dir":
            _place_link_or_dir(tree, deb, m, phys, here)
            continue
        if here is not None and here.type == "dir":
            raise PatchError(f"{deb.path}: {m.path} is a directory in the image, a {m.entry.type} in the package")
        if here is not None and phys not in own:
            foreign.add(phys)
        if m.path in deb.conffiles and unpacked:  # as dpkg --unpack: configure installs it
            conf_lines.append(f" {m.path} {recorded.get(m.path, 'newconffile')}")
            tree.entries[phys + DPKG_NEW] = replace(m.entry, path=phys + DPKG_NEW)
            continue
        if m.path in deb.conffiles:
            conf_lines.append(f" {m.path} {m.md5}")
            if here is not None and here.type == "file" and here.digest == m.entry.digest:
                continue  # the same content: dpkg leaves the file (and its mode and owner) alone
            if _conffile_kept(tree, phys, recorded.get(m.path)):
                tree.notes.append(f"{deb.name}: kept the image's modified {m.path} (new version not installed)")
                continue
        tree.entries[phys] = tree.overridden(replace(m.entry, path=phys))
    return listed, conf_lines, foreign


def _take_over(tree: Tree, deb: DebPackage, own_stem: str, foreign: set[str]) -> None:
    """Files the package now ships that another package's .list holds move to it, as dpkg moves
    them ("Replaced by files in installed package"): that list loses them, so neither a later
    patch of the other package nor its removal in the guest deletes them. Without a Replaces of
    that package dpkg would have refused (--force-overwrite): a warning says so."""
    info_dir = resolve(tree.entries, dpkg.INFO_DIR)
    if not foreign or info_dir is None:
        return
    replaces = {alt["name"] for group in depends.relations(deb.control, "Replaces") for alt in group}
    lists = [e for p, e in tree.entries.items() if p.startswith(f"{info_dir.path}/") and p.endswith(".list")]
    for e in lists:
        stem = e.path[len(info_dir.path) + 1:-len(".list")]
        if stem == own_stem or e.type != "file":
            continue
        lines = tree.content.read(e).decode("utf-8", errors="replace").splitlines()
        keep = [x for x in lines if not x.startswith("/") or _physical_or_none(tree, x, deb.path) not in foreign]
        if len(keep) == len(lines):
            continue
        owner = stem.split(":")[0]
        if owner not in replaces:
            tree.notes.append(f"warning: {deb.name} overwrote {len(lines) - len(keep)} files of {owner}, which it "
                              "does not Replace (dpkg would have refused without --force-overwrite)")
        tree.put_bytes(e.path, "".join(f"{x}\n" for x in keep).encode(), like=e)


def _old_list(tree: Tree, stem: str) -> list[str]:
    data = tree.read(f"{dpkg.INFO_DIR}/{stem}.list") or b""
    return [line for line in data.decode("utf-8", errors="replace").splitlines() if line.startswith("/")]


def _physical_or_none(tree: Tree, path: str, deb: Path) -> str | None:
    try:
        return tree.physical(path, deb)
    except PatchError:
        return None


def apply_deb(tree: Tree, deb: DebPackage, allow: Allow = Allow(), unpacked: bool = False) -> str:
    """One package upgraded in the tree; returns 'NAME OLD -> NEW' for the version's `how`. With
    `unpacked`, the result is what `dpkg --unpack` leaves (see patch())."""
    status_e = resolve(tree.entries, dpkg.STATUS_PATH)
    status = tree.read(dpkg.STATUS_PATH)
    if status is None or status_e is None:
        raise PatchError(f"the image has no {dpkg.STATUS_PATH}: it is not a Debian image; nothing patched")
    pkgs = dpkg.parse_status(status)
    old = target_paragraph(pkgs, deb, allow)
    check_version(old, deb, allow)
    tree.divert = diversions(tree.read(DIVERSIONS) or b"", deb.name)
    tree.overrides = statoverrides(tree.read(STATOVERRIDE) or b"", tree.read("/etc/passwd") or b"",
                                   tree.read("/etc/group") or b"")
    old_paths = [p for p in (_physical_or_none(tree, q, deb.path) for q in _old_list(tree, old.info_name)) if p]
    listed, conf_lines, foreign = _unpack(tree, deb, old, set(old_paths), unpacked)
    _take_over(tree, deb, old.info_name, foreign)
    shipped = {p for p in (_physical_or_none(tree, q, deb.path) for q in listed) if p}
    obsolete = {_physical_or_none(tree, c, deb.path) or c for c, _ in old.conffiles} - shipped
    tree.remove_unused([p for p in old_paths if p not in shipped], keep=obsolete)
    gone = [(c, md5) for c, md5 in old.conffiles if c not in deb.conffiles]
    conf_lines += [f" {c} {md5} obsolete" for c, md5 in gone]
    _write_info(tree, old.info_name, deb, listed + [c for c, _ in gone])  # dpkg lists obsolete conffiles too
    had = old.state not in ("not-installed", "config-files")
    paragraph = status_paragraph(deb, "hold" if old.want == "hold" else "install", conf_lines,
                                 state="unpacked" if unpacked else "installed",
                                 config_version=old.version if unpacked and old.state != "not-installed" else "")
    tree.put_bytes(status_e.path, with_paragraph(status, pkgs, old, paragraph), like=status_e)
    if deb.scripts and not unpacked:
        tree.notes.append(f"warning: {deb.name}: {NOT_RUN} ({', '.join(deb.scripts)}): what they do on an "
                          "upgrade (restart a service, rebuild a cache, migrate data) has not happened")
    return f"{deb.name} {old.version if had else '(not installed)'} -> {deb.version}"


def _write_info(tree: Tree, old_stem: str, deb: DebPackage, listed: list[str]) -> None:
    info_dir = resolve(tree.entries, dpkg.INFO_DIR)
    if info_dir is None or info_dir.type != "dir":
        raise PatchError(f"the image has no {dpkg.INFO_DIR} directory; its dpkg database is incomplete")
    for ext in (*INFO_FILES, "list"):
        tree.entries.pop(f"{info_dir.path}/{old_stem}.{ext}", None)
    stem = deb.info_stem()
    for name, (data, mode) in deb.info.items():
        tree.put_bytes(f"{info_dir.path}/{stem}.{name}", data, mode=mode)
    tree.put_bytes(f"{info_dir.path}/{stem}.list", "".join(f"{p}\n" for p in listed).encode())


def default_name(ref: str) -> str | None:
    """The image name a patch of `ref` is tagged under: 'web' for 'web' or 'web:2'; none for a digest."""
    return None if ref.startswith("sha256:") else ref.split(":", 1)[0]


def _precheck(tree: Tree, debs: list[DebPackage], allow: Allow) -> None:
    """Every refusal that needs no content: architecture, installed, version, dependencies."""
    status = tree.read(dpkg.STATUS_PATH)
    if status is None:
        raise PatchError(f"the image has no {dpkg.STATUS_PATH}: it is not a Debian image; nothing patched")
    pkgs = dpkg.parse_status(status)
    replaced = {}
    for deb in debs:
        old = target_paragraph(pkgs, deb, allow)
        check_version(old, deb, allow)
        replaced[(old.name, old.architecture)] = deb
    if not allow.depends:
        check_depends(status, replaced)


def check_depends(status: bytes, replaced: dict[tuple[str, str], DebPackage]) -> None:
    """PatchError naming every dependency the new packages would break (problems the image had
    before are not the patch's)."""
    before = depends.parse_paragraphs(status)
    after = [p for p in before if (p.get("Package"), p.get("Architecture")) not in replaced]
    for deb in replaced.values():
        fields = Deb822(deb.control)
        fields["Status"] = "install ok installed"
        after.append(fields)
    broken = sorted(depends.problems(after) - depends.problems(before))
    if broken:
        raise PatchError(f"the patch would break dependencies: {'; '.join(broken[:5])}"
                         f"{f' (and {len(broken) - 5} more)' if len(broken) > 5 else ''}; give the .debs that "
                         "fix them too (--deb ...), or --force-depends")


def patch(store: ImageStore, ref: str, debs: Sequence[Path], *, name: str | None = None,
          allow_downgrade: bool = False, force_depends: bool = False, install: bool = False,
          unpacked: bool = False, progress: Progress | None = None) -> ImageVersion:
    """A new version of `ref` with `debs` unpacked into it (see the module docstring). With
    `unpacked`, the packages are left as `dpkg --unpack` leaves them: state unpacked with their
    Config-Version, new conffiles beside the old ones as .dpkg-new, so that `dpkg --configure -a`
    in the guest runs their maintainer scripts and settles the conffiles as dpkg always does."""
    say = progress or (lambda _m: None)
    packages = [read_deb(Path(p)) for p in debs]
    if not packages:
        raise PatchError("no .deb given: name one or more with --deb FILE")
    base = store.resolve(ref)
    tree = Tree(index(store.manifest(base.digest)), store.content)
    allow = Allow(downgrade=allow_downgrade, depends=force_depends, install=install)
    _precheck(tree, packages, allow)  # refuse before storing anything
    done = []
    with importing(store):  # a failure drops the writer's lease: a GC may sweep what was stored
        for deb in packages:
            say(f"patch {ref}: {deb.name} {deb.version} from {deb.path.name}")
            done.append(apply_deb(tree, deb, allow, unpacked))
        if unpacked:
            tree.notes.append(f"left unpacked: `dpkg --configure -a` in the guest configures {', '.join(done)}")
        for note in tree.notes:
            say(note)
        how = f"patch {', '.join(done)} ({NOT_RUN}{'; left unpacked for dpkg --configure -a' if unpacked else ''})"
        return store.commit(list(tree.entries.values()), name=name if name is not None else default_name(ref),
                            parents=(base.digest,), how=how)


def _latest_refs(store: ImageStore) -> list[str]:
    """Every image's current version: NAME:latest for each name that has one."""
    return sorted(t for t in store.tags() if t.endswith(":latest"))


def _wanted(pkgs: list[dpkg.Package], debs: list[DebPackage], allow: Allow) -> tuple[list[Path], str]:
    """The .debs that upgrade packages this image has, and why the others do not apply."""
    use, why = [], []
    for deb in debs:
        try:
            check_version(target_paragraph(pkgs, deb, allow), deb, allow)
            use.append(deb.path)
        except PatchError as e:
            why.append(str(e).removeprefix(f"{deb.path}: "))
    return use, "; ".join(why)


def patch_all(store: ImageStore, package: str, debs: Sequence[Path], *, allow_downgrade: bool = False,
              force_depends: bool = False, install: bool = False, unpacked: bool = False,
              progress: Progress | None = None) -> list[dict[str, Any]]:
    """`--all-images-with PACKAGE`: every image (NAME:latest) that has PACKAGE installed gets one
    new version with those of `debs` that upgrade its packages (the others do not apply to it:
    other packages, or versions it has already). An image none apply to is `skipped`; one whose
    patch is refused (dependencies...) gets an `error` and the others go on."""
    from softudc.images.inspect import packages as packages_of

    say = progress or (lambda _m: None)
    read = [read_deb(Path(p)) for p in debs]
    out: list[dict[str, Any]] = []
    for ref in _latest_refs(store):
        v = store.resolve(ref)
        pkgs = packages_of(index(store.manifest(v.digest)), store.content.read)
        if not any(p.name == package and p.state not in ("not-installed", "config-files") for p in pkgs):
            continue
        use, why = _wanted(pkgs, read, Allow(allow_downgrade, force_depends, install))
        row: dict[str, Any] = {"image": ref, "from": v.digest}
        if not use:
            say(f"skip {ref}: {why}")
            out.append({**row, "skipped": why})
            continue
        try:
            new = patch(store, ref, use, allow_downgrade=allow_downgrade, force_depends=force_depends,
                        install=install, unpacked=unpacked, progress=say)
        except PatchError as e:
            say(f"not patched {ref}: {e}")
            out.append({**row, "error": str(e)})
            continue
        out.append({**row, "version": new.digest, "how": new.how})
    return out
