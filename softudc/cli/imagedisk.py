"""`softudc image materialize|boot|disks`: an image version as an ext4 disk image (cached in the
store directory's disks/, by manifest digest), a guest booted from it, and the cache itself
(softudc/images/materialize.py, boot.py)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from softudc.cli.errors import CliError
from softudc.cli.imagedir import image_store
from softudc.images.boot import BOOT_TIMEOUT, BootError, boot_check
from softudc.images.materialize import MaterializeError, materialize, prune

_SIZE = re.compile(r"(\d+)([KMGT]?)(i?B)?", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """Bytes from "4G", "512M", "1048576" (binary units)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise CliError(f"bad --size {text!r}: give bytes or a number with K, M, G or T, e.g. 2G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _disk(a: argparse.Namespace) -> Path:
    store = image_store(a)
    try:
        return materialize(store, a.ref, cache_dir=store.root / "disks",
                           size=parse_size(a.size) if a.size else None, progress=_progress)
    except MaterializeError as e:
        raise CliError(str(e)) from None


def _copy_out(disk: Path, dest: Path) -> None:
    """The cached image to `dest`: qcow2 if its name ends .qcow2, else a sparse raw copy."""
    if dest.suffix == ".qcow2":
        cmd = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(dest)]
    else:
        cmd = ["cp", "--sparse=always", "--reflink=auto", str(disk), str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CliError(f"cannot write {dest}: {done.stderr.strip()}")


def cmd_materialize(a: argparse.Namespace) -> None:
    disk = _disk(a)
    if a.output:
        _copy_out(disk, Path(a.output))
        print(a.output)
    else:
        print(disk)


def _print_seen(seen: dict[str, Any]) -> None:
    print(f"mounted {seen['mode']} ({seen['accel']}, {seen['seconds']} s): {seen['os'] or 'no /etc/os-release'}")
    for path, what in seen["checks"].items():
        print(f"{path}\t{what}")


def cmd_boot(a: argparse.Namespace) -> None:
    disk = _disk(a)
    try:
        seen = boot_check(disk, a.check, rw=a.rw, timeout=a.timeout, progress=_progress)
    except BootError as e:
        raise CliError(str(e)) from None
    if a.json:
        print(json.dumps(seen, indent=2))
    else:
        _print_seen(seen)


def cmd_disks(a: argparse.Namespace) -> None:
    """The cached disks; with --prune, those of versions no tag points at go."""
    store = image_store(a)
    cache = store.root / "disks"
    tags: dict[str, list[str]] = {}
    for tag, digest in store.tags().items():
        tags.setdefault(digest.removeprefix("sha256:"), []).append(tag)
    if a.prune:
        gone = prune(cache, {f"sha256:{d}" for d in tags}, dry_run=a.dry_run)
        verb = "would remove" if a.dry_run else "removed"
        for path, size in gone:
            print(f"{verb} {path} ({size >> 20} MiB)")
        print(f"{verb} {len(gone)} cached disks, {sum(n for _, n in gone) >> 20} MiB", file=sys.stderr)
        return
    for path in sorted(cache.glob("*.img")) if cache.is_dir() else []:
        names = ",".join(sorted(tags.get(path.name.split("-")[0].removesuffix(".img"), []))) or "(untagged)"
        print(f"{path.name[:12]}  {path.stat().st_blocks * 512 >> 20:>6} MiB  {names}  {path}")


def add_subcommands(commands: Any) -> None:
    """Adds this part's subcommands to the `image` group."""
    m = commands.add_parser("materialize", help="an image version as an ext4 disk image (cached; prints its path)")
    m.add_argument("ref", help="NAME, NAME:TAG or a digest (prefix)")
    m.add_argument("-o", "--output", metavar="FILE", help="write a copy there (qcow2 if FILE ends .qcow2, else raw)")
    m.add_argument("--size", help="filesystem size, e.g. 4G (default: the content plus room for metadata)")
    m.set_defaults(fn=cmd_materialize)
    b = commands.add_parser("boot", help="boot the test guest on an image's disk and show what it sees there")
    b.add_argument("ref", help="NAME, NAME:TAG or a digest (prefix)")
    b.add_argument("--check", action="append", default=[], metavar="PATH",
                   help="print this path's sha256 (or what it is) as the guest sees it; repeatable")
    b.add_argument("--rw", action="store_true", help="mount read-write (writes go to a throwaway snapshot)")
    b.add_argument("--size", help="filesystem size, e.g. 4G")
    b.add_argument("--timeout", type=float, default=BOOT_TIMEOUT, help="seconds to wait for the guest")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_boot)
    d = commands.add_parser("disks", help="the cached disk images; --prune removes those no tag points at")
    d.add_argument("--prune", action="store_true", help="remove disks of untagged versions and stale leftovers")
    d.add_argument("--dry-run", action="store_true", help="with --prune: say what would go, remove nothing")
    d.set_defaults(fn=cmd_disks)
