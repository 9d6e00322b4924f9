"""`softudc image list|tag|rm|history|manifest|gc|verify`: the store, its names and tags, garbage
collection and integrity (softudc/images/store.py, gc.py, verify.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from softudc.cli.admin import print_table
from softudc.cli.errors import CliError
from softudc.cli.imagedir import image_store
from softudc.images.store import ImageStore, Version


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _row(store: ImageStore, v: Version, tags: list[str]) -> dict[str, Any]:
    entries, size = store.stats(v.digest)
    return {"tags": tags, "digest": v.digest, "created": v.created, "how": v.how, "parents": list(v.parents),
            "entries": entries, "size": size}


def version_rows(store: ImageStore, everything: bool = False) -> list[dict[str, Any]]:
    """One row per version (newest first): tagged ones, or with `everything` all of them."""
    tags: dict[str, list[str]] = {}
    for tag, digest in store.tags().items():
        tags.setdefault(digest, []).append(tag)
    return [_row(store, v, tags.get(v.digest, [])) for v in reversed(store.versions())
            if everything or v.digest in tags]


def _print_rows(rows: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        print(json.dumps(rows, indent=2))
        return
    print_table([{**r, "digest": r["digest"][7:19], "created": _when(r["created"]), "size": human(r["size"])}
                 for r in rows], ["tags", "digest", "created", "entries", "size", "how"])


def cmd_list(a: argparse.Namespace) -> None:
    store = image_store(a)
    rows = version_rows(store, a.all)
    if not rows and a.output == "table":
        print("no images yet: `softudc image import` or `softudc image build` makes one", file=sys.stderr)
        return
    _print_rows(rows, a.output)
    if a.output == "table":
        u = store.usage()
        print(f"tagged versions hold {human(int(u['logical_bytes']))}; the store keeps "
              f"{human(int(u['stored_bytes']))} in {int(u['objects'])} objects "
              f"(dedupe and compression: {u['dedupe_ratio']}x)", file=sys.stderr)


def cmd_tag(a: argparse.Namespace) -> None:
    store = image_store(a)
    store.tag(a.ref, a.tag)
    tag = a.tag if ":" in a.tag else f"{a.tag}:latest"
    print(f"{tag} -> {store.resolve(tag).digest}")


def cmd_rm(a: argparse.Namespace) -> None:
    store = image_store(a)
    before = store.tags()
    store.untag(a.tag)
    gone = sorted(set(before) - set(store.tags()))
    print(f"untagged {', '.join(gone)}; the content stays until `softudc image gc`")


def cmd_history(a: argparse.Namespace) -> None:
    store = image_store(a)
    tags: dict[str, list[str]] = {}
    for tag, digest in store.tags().items():
        tags.setdefault(digest, []).append(tag)
    rows = [_row(store, v, tags.get(v.digest, [])) for v in store.history(a.ref)]
    if a.output == "json":
        print(json.dumps(rows, indent=2))
        return
    for depth, r in enumerate(rows):
        names = f" ({', '.join(r['tags'])})" if r["tags"] else ""
        print(f"{'  ' * min(depth, 1)}{r['digest'][:19]}{names}  {_when(r['created'])}  {r['how']}")


def cmd_manifest(a: argparse.Namespace) -> None:
    store = image_store(a)
    digest = store.resolve(a.ref).digest
    store.manifest(digest)  # checks it (and says so if it was collected)
    sys.stdout.buffer.write(store.content.get(digest))


def cmd_gc(a: argparse.Namespace) -> None:
    from softudc.images.gc import collect

    store = image_store(a)
    keep = [store.resolve(ref).digest for ref in a.keep]
    report = collect(store, keep=keep, dry_run=a.dry_run, progress=_progress)
    if a.output == "json":
        print(json.dumps(report.as_dict(), indent=2))
        return
    verb = "would remove" if a.dry_run else "removed"
    print(f"{verb} {report.swept_objects} objects ({human(report.swept_bytes)}); kept {report.kept_objects} "
          f"({human(report.kept_bytes)}) for {report.roots} versions"
          + (f"; {verb.split()[-1]} {report.swept_disks} cached disks ({human(report.swept_disk_bytes)})"
             if report.swept_disks else "")
          + (f"; {report.young_objects} newer than this GC kept" if report.young_objects else ""))


def cmd_verify(a: argparse.Namespace) -> None:
    from softudc.images.verify import verify

    report = verify(image_store(a), a.refs, move_aside=a.move_aside, progress=_progress)
    if a.output == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for p in report.problems:
            print(p.detail + (f"; moved to {p.moved_to}" if p.moved_to else ""))  # the detail names the object
            for image, path in p.users or [("no image", "-")]:
                print(f"  {image}: {path}")
        if report.ok:
            print(f"ok: {report.objects} objects of {report.versions} versions")
    if not report.ok:
        fix = ("re-import or rebuild " + ", ".join(report.images()) if report.images()
               else "no image uses them: `softudc image gc` removes them")
        aside = "" if a.move_aside else "run `softudc image verify --move-aside`, then "
        raise CliError(f"{len(report.problems)} bad objects: {aside}{fix}")


def add_subcommands(commands: Any) -> None:
    """Adds this part's subcommands to the `image` group."""
    ls = commands.add_parser("list", help="images: tags, digest, created, entries, size, how")
    ls.add_argument("--all", action="store_true", help="untagged versions too")
    ls.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ls.set_defaults(fn=cmd_list)
    tag = commands.add_parser("tag", help="point a tag at a version")
    tag.add_argument("ref", help="NAME, NAME:TAG or sha256:DIGEST-PREFIX")
    tag.add_argument("tag", help="NAME:TAG (NAME alone means NAME:latest)")
    tag.set_defaults(fn=cmd_tag)
    rm = commands.add_parser("rm", help="remove a tag, or every tag of a name (content goes at the next gc)")
    rm.add_argument("tag", metavar="NAME[:TAG]")
    rm.set_defaults(fn=cmd_rm)
    hist = commands.add_parser("history", help="a version and the versions it was derived from")
    hist.add_argument("ref")
    hist.add_argument("-o", "--output", choices=["table", "json"], default="table")
    hist.set_defaults(fn=cmd_history)
    man = commands.add_parser("manifest", help="print a version's manifest (JSON lines)")
    man.add_argument("ref")
    man.set_defaults(fn=cmd_manifest)
    gc = commands.add_parser("gc", help="remove content no tagged version uses")
    gc.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    gc.add_argument("--keep", action="append", default=[], metavar="REF",
                    help="keep this version's content too, tagged or not (repeat for more)")
    gc.add_argument("-o", "--output", choices=["table", "json"], default="table")
    gc.set_defaults(fn=cmd_gc)
    ver = commands.add_parser("verify", help="re-hash content; name every image and path a bad object hits")
    ver.add_argument("refs", nargs="*", metavar="REF", help="only these versions (default: the whole store)")
    ver.add_argument("--move-aside", action="store_true",
                     help="move corrupt objects to the store's corrupt/ so a re-import writes good copies")
    ver.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ver.set_defaults(fn=cmd_verify)
