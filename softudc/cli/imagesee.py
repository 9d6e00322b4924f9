"""`softudc image inspect|diff|search|patch`: seeing into images and updating them by manifest,
without booting them (softudc/images/inspect.py, diff.py, search.py, patch.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from softudc.cli.admin import print_table
from softudc.cli.errors import CliError
from softudc.cli.imagedir import image_store
from softudc.images.content import IntegrityError
from softudc.images.debpackage import PatchError
from softudc.images.dpkg import DpkgError
from softudc.images.manifest import ManifestError
from softudc.images.store import ImageError

KIB = 1024


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _errors() -> Iterator[None]:
    """The images library's errors as the CLI's: one line saying what to do."""
    try:
        yield
    except (ImageError, PatchError, DpkgError, ManifestError) as e:
        raise CliError(str(e)) from None
    except IntegrityError as e:
        raise CliError(f"{e}; run `softudc image verify` to see every image it hits") from None


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 10 * KIB or unit == "GiB":
            return f"{n} {unit}"
        n //= KIB
    return f"{n} GiB"


def print_inspect(out: dict[str, Any]) -> None:
    os_release = out["os"] or {}
    tags = ", ".join(out["tags"]) or "untagged"
    print(f"version:      {out['version']} ({tags})")
    print(f"how:          {out['how']}")
    print(f"os:           {os_release.get('PRETTY_NAME') or os_release.get('NAME') or 'unknown (no os-release)'}")
    print(f"architecture: {out['architecture'] or '-'}")
    print(f"kernels:      {', '.join(k['version'] for k in out['kernels']) or '-'}"
          f"  (modules: {', '.join(out['modules']) or '-'})")
    s = out["sizes"]
    print(f"size:         {s['entries']} entries, {s['files']} files, {_size(s['logical_bytes'])}  "
          + ", ".join(f"{d} {_size(n)}" for d, n in sorted(s["by_top_dir"].items(), key=lambda kv: -kv[1])[:6]))
    print(f"packages:     {len(out['packages'])}")
    if out["packages"]:
        print()
        print_table([{**p, "size": f"{p['installed_size_kib']} KiB" if p["installed_size_kib"] is not None else None}
                     for p in out["packages"]], ["name", "version", "architecture", "size", "state"])


def cmd_inspect(a: argparse.Namespace) -> None:
    from softudc.images.inspect import inspect

    with _errors():
        out = inspect(image_store(a), a.ref)
    _json(out) if a.output == "json" else print_inspect(out)


def _what(e: dict[str, Any]) -> str:
    return f"-> {e['target']}" if e["type"] == "symlink" else e["type"]


def print_diff(out: dict[str, Any]) -> None:
    files, pkgs = out["files"], out["packages"]
    print(f"--- {out['a']['ref']} ({out['a']['version'][:19]})")
    print(f"+++ {out['b']['ref']} ({out['b']['version'][:19]})")
    for p in pkgs["removed"]:
        print(f"- package {p['name']} {p['version']}")
    for p in pkgs["added"]:
        print(f"+ package {p['name']} {p['version']}")
    for p in pkgs["changed"]:
        state = f" ({p['state_a']} -> {p['state_b']})" if p["state_a"] != p["state_b"] else ""
        print(f"~ package {p['name']} {p['a']} -> {p['b']}{state}")
    for e in files["removed"]:
        print(f"- {e['path']} ({_what(e)})")
    for e in files["added"]:
        print(f"+ {e['path']} ({_what(e)})")
    for c in files["changed"]:
        print(f"~ {c['path']} ({', '.join(c['changed'])})")
    print(", ".join(f"{n} {k.replace('_', ' ')}" for k, n in out["summary"].items()), file=sys.stderr)


def cmd_diff(a: argparse.Namespace) -> None:
    from softudc.images.diff import diff

    with _errors():
        out = diff(image_store(a), a.a, a.b)
    _json(out) if a.output == "json" else print_diff(out)


def _match_text(m: dict[str, Any]) -> str:
    if "package" in m:
        return f"{m['package']} {m['version']}" + ("" if m["state"] == "installed" else f" ({m['state']})")
    at = f" at {m['found_at']}" if m.get("found_at", m["path"]) != m["path"] else ""
    extra = f" ({m['as']})" if m.get("as") == "chunk" else ""
    return f"{m['path']}{at} {_what(m)}{extra}"


def cmd_search(a: argparse.Namespace) -> None:
    from softudc.images.search import SearchError, search

    with _errors():
        try:
            hits = search(image_store(a), package=a.package, file=a.file, digest=a.digest, progress=_progress)
        except SearchError as e:
            raise CliError(str(e)) from None
    if a.output == "json":
        _json(hits)
        return
    if not hits:
        print("no tagged image matches", file=sys.stderr)
        return
    print_table([{"tags": h["tags"], "version": h["version"][7:19],
                  "match": f"ERROR {h['error']}" if "error" in h else _match_text(h["match"])} for h in hits],
                ["tags", "version", "match"])


def _patch_one(a: argparse.Namespace, debs: list[Path]) -> None:
    from softudc.images.patch import patch

    store = image_store(a)
    v = patch(store, a.ref, debs, name=a.name, allow_downgrade=a.allow_downgrade, force_depends=a.force_depends,
              install=a.install, unpacked=a.unpacked, progress=_progress)
    tags = sorted(t for t, d in store.tags().items() if d == v.digest)
    print(f"{', '.join(tags) or 'untagged'} -> {v.digest}: {v.how}")


def _patch_all(a: argparse.Namespace, debs: list[Path]) -> None:
    from softudc.images.patch import patch_all

    results = patch_all(image_store(a), a.all_images_with, debs, allow_downgrade=a.allow_downgrade,
                        force_depends=a.force_depends, install=a.install, unpacked=a.unpacked, progress=_progress)
    if not results:
        raise CliError(f"no tagged image has {a.all_images_with} installed (`softudc image search --package "
                       f"{a.all_images_with}`)")
    for r in results:
        if "version" in r:
            print(f"{r['image']} -> {r['version']}")
        else:
            print(f"{r['image']}: {'skipped' if 'skipped' in r else 'NOT PATCHED'} ({r.get('skipped') or r['error']})")
    if failed := [r["image"] for r in results if "error" in r]:
        raise CliError(f"{len(failed)} images not patched ({', '.join(failed)}): see why above")


def cmd_patch(a: argparse.Namespace) -> None:
    if bool(a.ref) == bool(a.all_images_with):
        raise CliError("give an image (softudc image patch web --deb FILE) or --all-images-with PACKAGE, not both")
    if a.all_images_with and a.name:
        raise CliError("--name applies to one image; with --all-images-with each image keeps its own name")
    debs = [Path(d) for d in a.deb]
    for d in debs:
        if not d.is_file():
            raise CliError(f"{d}: no such .deb file")
    work: Callable[[argparse.Namespace, list[Path]], None] = _patch_all if a.all_images_with else _patch_one
    with _errors():
        work(a, debs)


def add_subcommands(commands: Any) -> None:
    """Adds this part's subcommands to the `image` group."""
    ins = commands.add_parser("inspect", help="OS, kernel, packages (as dpkg-query -W lists them) and sizes")
    ins.add_argument("ref", help="NAME, NAME:TAG or sha256:DIGEST-PREFIX")
    ins.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ins.set_defaults(fn=cmd_inspect)
    d = commands.add_parser("diff", help="files and packages added, removed and changed from A to B")
    d.add_argument("a", metavar="A")
    d.add_argument("b", metavar="B")
    d.add_argument("-o", "--output", choices=["table", "json"], default="table")
    d.set_defaults(fn=cmd_diff)
    s = commands.add_parser("search", help="tagged images holding a package, a path or a content digest")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--package", metavar="SPEC",
                      help="NAME, or NAME then < <= = >= > and a version: 'openssl<3.0.15'")
    what.add_argument("--file", metavar="PATH", help="an absolute path, or a glob ('/etc/ssl/*.pem', '*/libssl.so.*')")
    what.add_argument("--digest", metavar="D", help="a file content digest (sha256:...)")
    s.add_argument("-o", "--output", choices=["table", "json"], default="table")
    s.set_defaults(fn=cmd_search)
    p = commands.add_parser("patch", help="a new version with newer .deb packages unpacked (no boot; maintainer "
                            "scripts are not run)")
    p.add_argument("ref", nargs="?", help="the image to patch (NAME, NAME:TAG or sha256:...)")
    p.add_argument("--all-images-with", metavar="PACKAGE", help="patch every image (NAME:latest) that has PACKAGE")
    p.add_argument("--deb", action="append", required=True, metavar="FILE", help="a .deb (repeat for several)")
    p.add_argument("--name", help="tag the new version NAME:N (default: the patched image's name)")
    p.add_argument("--allow-downgrade", action="store_true", help="install a .deb older than the image's package")
    p.add_argument("--install", action="store_true", help="also install .debs of packages the image does not have")
    p.add_argument("--unpacked", action="store_true",
                   help="leave the packages unpacked as `dpkg --unpack` does (new conffiles as .dpkg-new), for "
                   "`dpkg --configure -a` in the guest to run their maintainer scripts")
    p.add_argument("--force-depends", action="store_true",
                   help="patch even if a dependency would be left unmet or a Breaks/Conflicts hit")
    p.set_defaults(fn=cmd_patch)
