"""`softudc bench images`: the image store against the files it replaces (issue 14, Benchmarks).

In one run, in a temporary directory (progress on stderr):
  store       a family of Debian images built by debootstrap (minbase, +nginx-light, +postgresql,
              +python3, +openssh-server; cached like `softudc image build`): the bytes their files
              hold (logical), what the store keeps for all of them (deduplicated, zstd), and what
              the same images take as one qcow2 each (materialized, `qemu-img convert`) and as one
              tar.zst each (the build cache's trees)
  inspect     `softudc image inspect` per image, from a store opened afresh (manifest and package
              database read and parsed); virt-inspector on the same image's qcow2 when libguestfs
              is installed and can start its appliance, else the reason it was not run
  diff        `image diff` of two synthetic 10k-file images (100 changed, 50 added, 50 removed)
  search      across 100 images (the family and variants of it, each with its own
              /etc/hostname): by package spec (the issue's openssl<3.0.15, and libc6<2.37 which
              every image matches), by path, by content digest; search_100_images_s is the slowest
  throughput  import (a directory tree) and materialize of one image of >= 500 MB: the family's
              trees side by side under one root, into an empty store (MB/s of file content)
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from softudc.images.build import build_debian, cached_tree
from softudc.images.diff import diff
from softudc.images.importtree import import_tree
from softudc.images.inspect import inspect
from softudc.images.manifest import Entry
from softudc.images.materialize import materialize
from softudc.images.search import search
from softudc.images.store import ImageStore

FAMILY: tuple[tuple[str, ...], ...] = ((), ("nginx-light",), ("postgresql",), ("python3",), ("openssh-server",))
BUILD_CACHE = Path(os.environ.get("SOFTUDC_DEBOOTSTRAP_CACHE", "/var/tmp/softudc-debootstrap-cache"))
FLEET = 100
DIFF_FILES = 10_000
TARGETS = {"inspect_speedup": 100, "search_100_images_s": 1.0}
MB = 1_000_000


def _say(text: str) -> None:
    print(f"[bench images] {text}", file=sys.stderr, flush=True)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def family_name(packages: Sequence[str]) -> str:
    return "minbase" if not packages else packages[0].split("-")[0]


def build_family(store: ImageStore, family: Sequence[tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Builds (or takes from the cache) each image of the family: name -> its extra packages."""
    names = {}
    for packages in family:
        name = family_name(packages)
        _say(f"build {name} (+{','.join(packages) or 'nothing'})")
        build_debian(store, name, packages=packages, cache_dir=BUILD_CACHE, progress=_say)
        names[name] = packages
    return names


def _objects_of(entries: list[Entry]) -> set[str]:
    return {o for e in entries if e.type == "file" for o in e.chunks or (e.digest,)}


def qcow2_of(store: ImageStore, ref: str, work: Path) -> Path:
    """The image as one qcow2 file, the form image sprawl takes (materialized, then converted)."""
    raw = materialize(store, ref, cache_dir=work / "disks")
    out = work / f"{ref}.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    raw.unlink()
    return out


def store_sizes(store: ImageStore, names: dict[str, tuple[str, ...]], work: Path) -> dict[str, Any]:
    logical, objects, qcow2, tar_zst = 0, set(), 0, 0
    per_image = {}
    for name, packages in names.items():
        version = store.resolve(name)
        entries = store.manifest(version.digest)
        size = sum(e.size for e in entries if e.type == "file")
        logical += size
        objects |= _objects_of(entries) | {version.digest}
        q = qcow2_of(store, name, work).stat().st_size
        t = cached_tree(BUILD_CACHE, "bookworm", packages=packages).stat().st_size
        qcow2 += q
        tar_zst += t
        per_image[name] = {"files": sum(e.type == "file" for e in entries), "logical_bytes": size,
                           "qcow2_bytes": q, "tar_zst_bytes": t}
        _say(f"{name}: {size / MB:.0f} MB of files, qcow2 {q / MB:.0f} MB, tar.zst {t / MB:.0f} MB")
    stored = sum(store.content.path_of(o).stat().st_size for o in objects)
    return {"images": len(names), "logical_bytes": logical, "stored_bytes": stored,
            "dedupe_ratio": round(logical / stored, 2), "qcow2_bytes": qcow2, "tar_zst_bytes": tar_zst,
            "qcow2_vs_store": round(qcow2 / stored, 2), "tar_zst_vs_store": round(tar_zst / stored, 2),
            "per_image": per_image}


def appliance_env(work: Path) -> dict[str, str]:
    """Environment for libguestfs on a host without /boot and /lib/modules (a container, a
    microVM): supermin builds its appliance from the Debian cloud kernel (the test guest's), and
    QEMU runs under TCG where KVM cannot start a stock kernel (softudc/lab/accel.py)."""
    from softudc.images.boot import guest_dir
    from softudc.lab.accel import probe_accel
    from softudc.lab.state import default_state_dir

    env = dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_CACHEDIR=str(work / "guestfs-cache"))
    (work / "guestfs-cache").mkdir(exist_ok=True)
    if probe_accel(guest_dir(), Path(default_state_dir())) != "kvm":
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    if list(Path("/boot").glob("vmlinuz-*")):
        return env
    kdir = work / "kernel"
    kdir.mkdir(mode=0o755)
    depends = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True,
                             check=True).stdout
    kpkg = next(w.split()[-1] for w in depends.splitlines() if "Depends: linux-image-" in w)
    subprocess.run(["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", kpkg], cwd=kdir, check=True)
    (deb,) = kdir.glob("*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(kdir / "root")], check=True)
    kver = kpkg.removeprefix("linux-image-")
    subprocess.run(["depmod", "-b", str(kdir / "root"), kver], check=True)
    env.update(SUPERMIN_KERNEL=str(kdir / "root" / "boot" / f"vmlinuz-{kver}"), SUPERMIN_KERNEL_VERSION=kver,
               SUPERMIN_MODULES=str(kdir / "root" / "lib" / "modules" / kver))
    return env


def virt_inspector(qcow2: Path) -> tuple[float | None, set[tuple[str, str]] | None, str]:
    """(seconds, (name, version) of the packages it lists, why not) for libguestfs' virt-inspector.
    The appliance is built (and cached) before the timed run: the time is one inspection."""
    if shutil.which("virt-inspector") is None:
        return None, None, ("virt-inspector is not installed (Debian libguestfs-tools, "
                            "apt-get install --no-install-recommends libguestfs-tools)")
    if not Path("/lib/modules").is_dir():
        return None, None, "supermin needs /lib/modules to exist (even empty) to build the libguestfs appliance"
    env = appliance_env(qcow2.parent)
    warm = subprocess.run(["libguestfs-test-tool"], capture_output=True, text=True, env=env, timeout=900, check=False)
    if warm.returncode != 0:
        return None, None, f"libguestfs cannot start its appliance here: {warm.stdout.strip()[-300:]}"
    seconds, done = _timed(lambda: subprocess.run(["virt-inspector", "--no-icon", "-a", str(qcow2)], env=env,
                                                  capture_output=True, text=True, timeout=900, check=False))
    if done.returncode != 0:
        return None, None, f"virt-inspector failed: {done.stderr.strip()[-500:]}"
    import xml.etree.ElementTree as ET

    apps = ET.fromstring(done.stdout).iter("application")
    found = {(a.findtext("name", ""), _deb_version(a)) for a in apps}
    return seconds, found, ""


def _deb_version(app: Any) -> str:
    epoch, version, release = app.findtext("epoch", ""), app.findtext("version", ""), app.findtext("release", "")
    full = f"{epoch}:{version}" if epoch not in ("", "0") else version
    return f"{full}-{release}" if release else full


def inspect_bench(root: Path, names: Sequence[str], work: Path) -> dict[str, Any]:
    times = {}
    ours_packages: set[tuple[str, str]] = set()
    for name in names:
        fresh = ImageStore.open(root)  # nothing cached: the manifest and status are read and parsed
        times[name], seen = _timed(lambda n=name, s=fresh: inspect(s, n))  # type: ignore[misc]
        fresh.close()
        if name == names[0]:
            ours_packages = {(p["name"].split(":")[0], p["version"]) for p in seen["packages"]}
    ours = statistics.median(times.values())
    store = ImageStore.open(root)
    theirs, their_packages, why = virt_inspector(qcow2_of(store, names[0], work))
    store.close()
    return {"ours_s": round(ours, 4), "ours_per_image_s": {k: round(v, 4) for k, v in times.items()},
            "virt_inspector_s": theirs, "speedup": round(theirs / ours, 1) if theirs else None,
            "same_packages": (their_packages == ours_packages) if their_packages is not None else None,
            "virt_inspector_note": why, "image": names[0]}


def _small_files(store: ImageStore, n: int, salt: str) -> list[Entry]:
    out = [Entry("/", "dir", 0o755)]
    for d in range(n // 100):
        out.append(Entry(f"/d{d:03}", "dir", 0o755))
        for f in range(100):
            data = f"file {d}/{f} {salt}\n".encode()
            out.append(store.content.entry_for_file(f"/d{d:03}/f{f:03}", io.BytesIO(data), mode=0o644, uid=0, gid=0))
    return out


def diff_bench(root: Path) -> dict[str, Any]:
    """Two images of DIFF_FILES small files in directories of 100: B drops 50 of A's, changes one
    per directory (100 for 10k files) and adds 50."""
    store = ImageStore.open(root)
    a = _small_files(store, DIFF_FILES, "a")
    dirs = DIFF_FILES // 100

    def put(path: str, data: bytes) -> Entry:
        return store.content.entry_for_file(path, io.BytesIO(data), mode=0o644, uid=0, gid=0)

    removed = {f"/d000/f{f:03}" for f in range(50)}
    changed = {f"/d{d:03}/f099" for d in range(dirs)}
    b = [put(e.path, b"changed " + e.path.encode()) if e.path in changed else e for e in a if e.path not in removed]
    b += [put(f"/d001/new{k:02}", f"new {k}".encode()) for k in range(50)]
    store.commit(a, name="diff-a", how="bench")
    store.commit(b, name="diff-b", how="bench")
    store.close()
    fresh = ImageStore.open(root)
    seconds, out = _timed(lambda: diff(fresh, "diff-a", "diff-b"))
    fresh.close()
    return {"files": DIFF_FILES, "seconds": round(seconds, 3), "summary": out["summary"]}


def search_bench(store: ImageStore, names: Sequence[str]) -> dict[str, Any]:
    """Tags FLEET images (the family and variants of it) and searches them all three ways."""
    for i in range(FLEET - len(names)):
        base = store.manifest(names[i % len(names)])
        hostname = store.content.entry_for_file("/etc/hostname", io.BytesIO(f"host{i:03}\n".encode()), mode=0o644,
                                                uid=0, gid=0)
        store.commit([hostname if e.path == "/etc/hostname" else e for e in base], name=f"fleet{i:03}",
                     parents=[names[i % len(names)]], how="bench variant")
    libc = next(e.digest for e in store.manifest(names[0]) if e.path.endswith("/libc.so.6") and e.type == "file")
    queries = {"package": {"package": "openssl<3.0.15"}, "package_all": {"package": "libc6<2.37"},
               "file": {"file": "/etc/ssl/openssl.cnf"}, "digest": {"digest": libc}}
    out: dict[str, Any] = {"images": len({d for d in store.tags().values()})}
    for kind, query in queries.items():
        fresh = ImageStore.open(store.root)
        seconds, hits = _timed(lambda q=query, s=fresh: search(s, **q))  # type: ignore[misc]
        fresh.close()
        out[kind] = {"query": next(iter(query.values())), "seconds": round(seconds, 3), "hits": len(hits)}
        _say(f"search {kind} {out[kind]}")
    return out


def throughput(names: dict[str, tuple[str, ...]], work: Path) -> dict[str, Any]:
    """Import and materialize of one big image: every family tree side by side under one root."""
    tree = work / "big"
    tree.mkdir()
    for name, packages in names.items():
        (tree / name).mkdir()
        subprocess.run(f"zstd -dc {cached_tree(BUILD_CACHE, 'bookworm', packages=packages)} | tar --numeric-owner "
                       f"-xpf - -C {tree / name}", shell=True, check=True)
    store = ImageStore.open(work / "big-store")
    seconds_in, version = _timed(lambda: import_tree(store, tree, name="big"))
    shutil.rmtree(tree)
    size = sum(e.size for e in store.manifest(version.digest) if e.type == "file")
    stored = sum(n for _, n in store.content.objects())
    seconds_out, disk = _timed(lambda: materialize(store, "big", cache_dir=work / "big-disks"))
    disk.unlink()
    store.close()
    # the family's trees share most files: the import hashes every byte but compresses and
    # writes each distinct content once (stored_bytes), as it would for any real image
    return {"image_bytes": size, "stored_bytes": stored, "import_s": round(seconds_in, 1),
            "materialize_s": round(seconds_out, 1),
            "import": round(size / MB / seconds_in, 1), "materialize": round(size / MB / seconds_out, 1)}


def run_images(family: Sequence[tuple[str, ...]] = FAMILY, work_dir: Path | None = None) -> dict[str, Any]:
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="softudc-bench-images-", dir=work_dir) as tmp:
        work = Path(tmp)
        store = ImageStore.open(work / "store")
        names = build_family(store, family)
        result: dict[str, Any] = {"family": {n: list(p) for n, p in names.items()}}
        result["store"] = store_sizes(store, names, work)
        store.close()
        _say("inspect")
        result["inspect"] = inspect_bench(work / "store", list(names), work)
        _say(f"diff of two {DIFF_FILES}-file images")
        result["diff_10k"] = diff_bench(work / "diff-store")
        store = ImageStore.open(work / "store")
        result["search"] = search_bench(store, list(names))
        store.close()
        result["search_100_images_s"] = max(q["seconds"] for q in result["search"].values() if isinstance(q, dict))
        _say("throughput: import and materialize one image of the whole family")
        result["throughput_mbps"] = throughput(names, work)
    result["targets"] = TARGETS
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    result["seconds"] = round(time.time() - started, 1)
    return result


def print_images(result: dict[str, Any]) -> None:
    """The figures a reader compares, one line each (--json has them all)."""
    s, i, t = result["store"], result["inspect"], result["throughput_mbps"]
    print(f"store: {s['images']} images hold {s['logical_bytes'] / MB:.0f} MB of files; the store keeps "
          f"{s['stored_bytes'] / MB:.0f} MB (dedupe+zstd {s['dedupe_ratio']}x); one qcow2 each: "
          f"{s['qcow2_bytes'] / MB:.0f} MB ({s['qcow2_vs_store']}x), one tar.zst each: "
          f"{s['tar_zst_bytes'] / MB:.0f} MB ({s['tar_zst_vs_store']}x)")
    theirs = f"{i['virt_inspector_s']:.1f} s ({i['speedup']}x)" if i["virt_inspector_s"] else i["virt_inspector_note"]
    print(f"inspect: ours {i['ours_s'] * 1000:.1f} ms per image; virt-inspector: {theirs}")
    print(f"diff of two {result['diff_10k']['files']}-file images: {result['diff_10k']['seconds']} s")
    for kind in ("package", "package_all", "file", "digest"):
        q = result["search"][kind]
        print(f"search {result['search']['images']} images by {kind} {q['query']}: {q['seconds']} s, {q['hits']} hits")
    print(f"throughput ({t['image_bytes'] / MB:.0f} MB image): import {t['import']} MB/s, "
          f"materialize {t['materialize']} MB/s")
