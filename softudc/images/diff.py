"""`softudc image diff A B`: what differs between two versions, from their manifests alone (and
the two dpkg status files for the package view). Both manifests are indexed by path, so
a pass over each finds added, removed and changed paths; a changed path says what changed:
content (the whole-content digest, whatever the chunking), type, mode, owner, target, device,
xattrs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from softudc.images import dpkg
from softudc.images.inspect import packages
from softudc.images.manifest import Entry, index, parse_manifest
from softudc.images.manifestscan import ScanIndex

if TYPE_CHECKING:
    from softudc.images.store import ImageStore

Reader = Callable[[Entry], bytes]


def _what_changed(a: Entry, b: Entry) -> list[str]:
    if a.type != b.type:
        return ["type"]
    checks = (("content", a.digest != b.digest), ("mode", a.mode != b.mode),
              ("owner", (a.uid, a.gid) != (b.uid, b.gid)), ("target", a.target != b.target),
              ("device", a.device != b.device), ("xattrs", a.xattrs != b.xattrs))
    return [name for name, differs in checks if differs]


def describe(e: Entry) -> dict[str, Any]:
    """An entry as diff and search print it: its type and the fields that matter for that type."""
    out: dict[str, Any] = {"type": e.type, "mode": f"{e.mode:04o}", "owner": f"{e.uid}:{e.gid}"}
    if e.type == "file":
        out.update(size=e.size, digest=e.digest)
    elif e.type == "symlink":
        out["target"] = e.target
    elif e.type == "device":
        out["device"] = e.device
    return out


def diff_files(a: list[Entry], b: list[Entry]) -> dict[str, list[dict[str, Any]]]:
    """Added, removed and changed paths from `a` to `b`, in manifest order."""
    ia, ib = index(a), index(b)
    changed = []
    for eb in b:
        ea = ia.get(eb.path)
        if ea is not None and ea != eb and (what := _what_changed(ea, eb)):
            changed.append({"path": eb.path, "changed": what, "a": describe(ea), "b": describe(eb)})
    return {"added": [{"path": e.path, **describe(e)} for e in b if e.path not in ia],
            "removed": [{"path": e.path, **describe(e)} for e in a if e.path not in ib],
            "changed": changed}


def diff_packages(a: list[dpkg.Package], b: list[dpkg.Package]) -> dict[str, list[dict[str, Any]]]:
    """Packages (as `dpkg-query -W` lists them) added, removed, or changed in version or state."""
    arch_a, arch_b = dpkg.native_arch(a), dpkg.native_arch(b)
    pa = {p.shown_name(arch_a): p for p in dpkg.listed(a)}
    pb = {p.shown_name(arch_b): p for p in dpkg.listed(b)}
    changed = [{"name": n, "a": pa[n].version, "b": pb[n].version, "state_a": pa[n].state, "state_b": pb[n].state}
               for n in sorted(pa.keys() & pb.keys())
               if (pa[n].version, pa[n].state) != (pb[n].version, pb[n].state)]
    return {"added": [{"name": n, "version": pb[n].version} for n in sorted(pb.keys() - pa.keys())],
            "removed": [{"name": n, "version": pa[n].version} for n in sorted(pa.keys() - pb.keys())],
            "changed": changed}


def diff_entries(a: list[Entry], b: list[Entry], read: Reader) -> dict[str, Any]:
    return _diffed(diff_files(a, b), packages(index(a), read), packages(index(b), read))


def _only(data: bytes, other: set[bytes]) -> list[Entry]:
    """The entries of manifest `data` whose line is not among `other`'s lines, in order."""
    return parse_manifest(b"".join(line + b"\n" for line in data.split(b"\n")[:-1] if line not in other))


def diff_bytes(a: bytes, b: bytes, read: Reader) -> dict[str, Any]:
    """diff_entries of two manifests' canonical bytes: an identical line is an identical entry, so
    only the lines that differ are parsed (a small change to a 10k-entry image costs milliseconds,
    not two full parses)."""
    lines_a, lines_b = set(a.split(b"\n")), set(b.split(b"\n"))
    files = diff_files(_only(a, lines_b), _only(b, lines_a))
    return _diffed(files, packages(ScanIndex(a), read), packages(ScanIndex(b), read))


def _diffed(files: dict[str, list[dict[str, Any]]], pa: list[dpkg.Package], pb: list[dpkg.Package]) -> dict[str, Any]:
    pkgs = diff_packages(pa, pb)
    summary = {f"files_{k}": len(v) for k, v in files.items()} | {f"packages_{k}": len(v) for k, v in pkgs.items()}
    return {"files": files, "packages": pkgs, "summary": summary}


def diff(store: ImageStore, a: str, b: str) -> dict[str, Any]:
    """What differs from version `a` to version `b` (any refs: names, tags, digests)."""
    va, vb = store.resolve(a), store.resolve(b)
    out = diff_bytes(store.content.get(va.digest), store.content.get(vb.digest), store.content.read)
    return {"a": {"ref": a, "version": va.digest}, "b": {"ref": b, "version": vb.digest}, **out}
