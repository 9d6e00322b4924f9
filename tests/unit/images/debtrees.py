"""Test helpers: small Debian-looking trees (a usrmerged root, os-release, a kernel, a dpkg
database whose status and info files agree with the files on disk) and .deb files built with
dpkg-deb, so inspect, diff, search and patch run on what a real image holds."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n' \
             b'VERSION_CODENAME=bookworm\nID=debian\n'


@dataclass
class Pkg:
    name: str
    version: str
    files: dict[str, bytes] = field(default_factory=dict)   # "/usr/bin/x" -> content
    arch: str = "amd64"
    conffiles: tuple[str, ...] = ()
    postinst: str = ""
    multi_arch: str = ""
    links: dict[str, str] = field(default_factory=dict)      # "/usr/bin/y" -> target
    relations: str = ""                                      # e.g. "Depends: a (>= 1)\nBreaks: b (<< 2)\n"

    def control(self) -> str:
        ma = f"Multi-Arch: {self.multi_arch}\n" if self.multi_arch else ""
        kib = 1 + sum(map(len, self.files.values())) // 1024
        return (f"Package: {self.name}\nVersion: {self.version}\nArchitecture: {self.arch}\n{ma}{self.relations}"
                f"Maintainer: Test <test@example.org>\nInstalled-Size: {kib}\n"
                f"Section: misc\nPriority: optional\nDescription: test package {self.name}\n a test.\n")

    def dirs(self) -> list[str]:
        out: set[str] = set()
        for p in [*self.files, *self.links]:
            parts = p.split("/")[1:-1]
            out.update("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return sorted(out)

    def md5sums(self) -> str:
        return "".join(f"{hashlib.md5(d).hexdigest()}  {p[1:]}\n" for p, d in sorted(self.files.items()))

    def stem(self) -> str:
        return f"{self.name}:{self.arch}" if self.multi_arch == "same" else self.name


def write(root: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    os.chmod(dest, mode)


def status_paragraph(p: Pkg, state: str = "install ok installed") -> str:
    conf = "".join(f" {c} {hashlib.md5(p.files[c]).hexdigest()}\n" for c in p.conffiles)
    lines = p.control().replace("Version:", f"Status: {state}\nVersion:", 1)
    return lines.replace("Description:", f"Conffiles:\n{conf}Description:", 1) if conf else lines


def debian_tree(root: Path, pkgs: list[Pkg], extra_status: str = "") -> Path:
    """A bookworm-like tree under `root` with `pkgs` installed (files, status, info files)."""
    for d in ("usr/lib", "usr/bin", "etc", "boot", "var/lib/dpkg/info", "usr/lib/modules/6.1.0-9-amd64"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/bin", root / "bin")
    write(root, "/usr/lib/os-release", OS_RELEASE)
    os.symlink("../usr/lib/os-release", root / "etc/os-release")
    write(root, "/boot/vmlinuz-6.1.0-9-amd64", b"kernel" * 100)
    write(root, "/usr/lib/modules/6.1.0-9-amd64/modules.dep", b"")
    status = []
    for p in pkgs:
        for path, data in p.files.items():
            real = path.replace("/lib/", "/usr/lib/", 1) if path.startswith("/lib/") else path
            write(root, real, data, 0o755 if "/bin/" in path else 0o644)
        for path, target in p.links.items():
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, root / path.lstrip("/"))
        info = root / "var/lib/dpkg/info"
        (info / f"{p.stem()}.list").write_text("/.\n" + "".join(f"{x}\n" for x in [*p.dirs(), *p.files, *p.links]))
        (info / f"{p.stem()}.md5sums").write_text(p.md5sums())
        if p.postinst:
            write(root, f"/var/lib/dpkg/info/{p.stem()}.postinst", p.postinst.encode(), 0o755)
        status.append(status_paragraph(p))
    (root / "var/lib/dpkg/status").write_text("\n".join(status) + ("\n" + extra_status if extra_status else ""))
    return root


def build_deb(work: Path, p: Pkg) -> Path:
    """`p` as a .deb, built by dpkg-deb (root-owned members, as Debian's builds make them)."""
    src = work / f"{p.name}_{p.version}_{p.arch}.src"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN/control").write_text(p.control())
    (src / "DEBIAN/md5sums").write_text(p.md5sums())
    if p.conffiles:
        (src / "DEBIAN/conffiles").write_text("".join(f"{c}\n" for c in p.conffiles))
    if p.postinst:
        write(src, "/DEBIAN/postinst", p.postinst.encode(), 0o755)
    for path, data in p.files.items():
        write(src, path, data, 0o755 if "/bin/" in path else 0o644)
    for path, target in p.links.items():
        (src / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, src / path.lstrip("/"))
    out = work / f"{p.name}_{p.version.replace(':', '%3a')}_{p.arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(src), str(out)], check=True,
                   capture_output=True)
    return out
