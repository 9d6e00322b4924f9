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
from softudc.images.manifest import Entry, index

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
    files = diff_files(a, b)
    pkgs = diff_packages(packages(index(a), read), packages(index(b), read))
    summary = {f"files_{k}": len(v) for k, v in files.items()} | {f"packages_{k}": len(v) for k, v in pkgs.items()}
    return {"files": files, "packages": pkgs, "summary": summary}


def diff(store: ImageStore, a: str, b: str) -> dict[str, Any]:
    """diff_entries of two stored versions (any refs: names, tags, digests)."""
    va, vb = store.resolve(a), store.resolve(b)
    out = diff_entries(store.manifest(va.digest), store.manifest(vb.digest), store.content.read)
    return {"a": {"ref": a, "version": va.digest}, "b": {"ref": b, "version": vb.digest}, **out}
