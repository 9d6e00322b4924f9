"""`softudc image import NAME (--tree DIR | --tar FILE|- | --disk FILE)` and `softudc image build
NAME --debootstrap SUITE [--packages a,b] [--variant minbase]`: new image versions from a
directory, a tar stream, a raw or qcow2 disk image (never mounted, never booted), or debootstrap
(softudc/images/importtree.py, importtar.py, importdisk.py, build.py).

Each prints the version it made: its tag and digest, how many entries, their bytes, and how many
bytes the store grew by (what was new to it, compressed); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from softudc.cli.errors import CliError
from softudc.cli.imagedir import image_store
from softudc.images.importtree import ImportRefused
from softudc.images.manifest import ManifestError
from softudc.images.store import ImageStore, Version


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _stored_bytes(store: ImageStore) -> int:
    return sum(size for _, size in store.content.objects())


def _tag_of(store: ImageStore, name: str, v: Version) -> str:
    numbered = [t for t, d in store.tags().items() if d == v.digest and t.startswith(f"{name}:")
                and t.partition(":")[2].isdigit()]
    return max(numbered, key=lambda t: int(t.partition(":")[2]), default=f"{name}:latest")


def _make(a: argparse.Namespace, work: Callable[[ImageStore], Version]) -> None:
    """Runs one import, then prints what it made."""
    store = image_store(a)
    before, began = _stored_bytes(store), time.monotonic()
    try:
        v = work(store)
    except (ImportRefused, ManifestError) as e:
        raise CliError(str(e)) from None
    entries, size = store.stats(v.digest)
    summary: dict[str, Any] = {"tag": _tag_of(store, a.name, v), "digest": v.digest, "how": v.how, "entries": entries,
                               "bytes": size, "new_bytes_stored": _stored_bytes(store) - before,
                               "seconds": round(time.monotonic() - began, 2)}
    if a.output == "json":
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['tag']} {v.digest}\n  {entries} entries, {size} bytes; {summary['new_bytes_stored']} new "
          f"bytes stored (compressed); {summary['seconds']} s; {v.how}")


def cmd_import(a: argparse.Namespace) -> None:
    from softudc.images.importdisk import import_disk
    from softudc.images.importtar import import_tar
    from softudc.images.importtree import import_tree

    if a.partition is not None and not a.disk:
        raise CliError("--partition goes with --disk")
    if a.tree:
        if not Path(a.tree).is_dir():
            raise CliError(f"{a.tree}: not a directory; --tree wants the root of the tree to import")
        _make(a, lambda s: import_tree(s, Path(a.tree), name=a.name, progress=_progress))
    elif a.disk:
        _make(a, lambda s: import_disk(s, Path(a.disk), name=a.name, partition=a.partition, progress=_progress))
    elif a.tar == "-":
        _make(a, lambda s: import_tar(s, sys.stdin.buffer, name=a.name, source="stdin", progress=_progress))
    else:
        try:
            f = open(a.tar, "rb")  # noqa: SIM115 - closed below, after the import
        except OSError as e:
            raise CliError(f"cannot read the tar {a.tar}: {e.strerror}") from None
        with f:
            _make(a, lambda s: import_tar(s, f, name=a.name, source=a.tar, progress=_progress))


def _packages(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def cmd_build(a: argparse.Namespace) -> None:
    from softudc.images.build import build_debian

    _make(a, lambda s: build_debian(s, a.name, suite=a.debootstrap, packages=_packages(a.packages),
                                    variant=a.variant, cache_dir=Path(a.cache) if a.cache else None,
                                    progress=_progress))


def add_subcommands(commands: Any) -> None:
    """Adds this part's subcommands to the `image` group."""
    imp = commands.add_parser("import", help="a new version of NAME from a directory tree, a tar stream or "
                              "a raw/qcow2 ext4 disk image (never mounted or booted)")
    imp.add_argument("name", help="the image name: the version becomes NAME:N and NAME:latest")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--tree", metavar="DIR", help="a directory (symlinks stored, never followed)")
    source.add_argument("--tar", metavar="FILE", help="a tar archive, plain or gz/bz2/xz/zst; '-' reads stdin")
    source.add_argument("--disk", metavar="FILE", help="a raw or qcow2 disk image holding ext2/3/4 "
                        "(the whole disk or one MBR/GPT partition)")
    imp.add_argument("--partition", type=int, metavar="N", help="with --disk: the partition to import when "
                     "the disk has several ext2/3/4 ones (N as in sdaN)")
    imp.add_argument("-o", "--output", choices=["table", "json"], default="table")
    imp.set_defaults(fn=cmd_import)
    build = commands.add_parser("build", help="a new version of NAME built by debootstrap (as root; cached)")
    build.add_argument("name", help="the image name: the version becomes NAME:N and NAME:latest")
    build.add_argument("--debootstrap", metavar="SUITE", required=True, help="the Debian suite, e.g. bookworm")
    build.add_argument("--packages", default="", metavar="A,B", help="extra packages (debootstrap --include)")
    build.add_argument("--variant", default="minbase", help="debootstrap variant (default: minbase)")
    build.add_argument("--cache", metavar="DIR", help="where built trees are kept "
                       "(default: the store's cache/debootstrap)")
    build.add_argument("-o", "--output", choices=["table", "json"], default="table")
    build.set_defaults(fn=cmd_build)
