"""Boot the project's test guest (scripts/build-guest.sh: the Debian cloud kernel and a busybox
initramfs) with a materialized image as its virtio disk, and report what the guest saw in it.

The guest's init (guest/init) mounts the disk at /root-image when the kernel command line says
`svroot=/dev/vda`, prints one line per path asked for with `svcheck=`:

    ROOT_MOUNTED dev=/dev/vda mode=ro os=Debian_GNU/Linux_12_(bookworm)
    SVCHECK /etc/hostname sha256=<hex>      (or symlink=TARGET, dir, other, missing)
    ROOT_CHECKED dev=/dev/vda

and this module stops QEMU (by its PID) once it has read them. The guest keeps its own busybox
userland rather than switching to the image's /sbin/init: an image need not be bootable on its
own (a minbase tree has no kernel) to be checked this way, and the check is the same for all.
A read-write boot (`rw=True`) writes into a throwaway QEMU snapshot, never into the cached image.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from softudc.lab.accel import probe_accel
from softudc.lab.state import default_state_dir

Progress = Callable[[str], None]
BOOT_TIMEOUT = 300.0  # TCG on a loaded 2-core machine: a boot takes 5 to 60 s
CMDLINE_MAX = 2000  # x86's COMMAND_LINE_SIZE is 2048


class BootError(Exception):
    """The guest could not be started, did not mount the disk, or timed out; names the console log."""


def guest_dir() -> Path:
    """The test guest: $SOFTUDC_GUEST_DIR, else this checkout's build/guest (`make guest`)."""
    d = Path(os.environ.get("SOFTUDC_GUEST_DIR") or Path(__file__).resolve().parents[2] / "build" / "guest")
    if not (d / "vmlinuz").exists() or not (d / "initrd.img").exists():
        raise BootError(f"no test guest in {d}; build it with `make guest`")
    return d


def kernel_cmdline(checks: Sequence[str], *, rw: bool = False) -> str:
    for path in checks:
        if not path.startswith("/") or any(c in path for c in " ,\t\n\"'"):
            raise BootError(f"cannot check {path!r} in the guest: give absolute paths without spaces, "
                            "commas or quotes")
    line = "console=ttyS0 quiet panic=-1 svhttpd=0 svroot=/dev/vda"
    if rw:
        line += " svrootrw=1"
    if checks:
        line += " svcheck=" + ",".join(checks)
    if len(line) > CMDLINE_MAX:
        raise BootError(f"{len(checks)} paths make the kernel command line too long ({len(line)} > "
                        f"{CMDLINE_MAX} bytes): check fewer at a time")
    return line


def parse_console(text: str) -> dict[str, Any]:
    """What the guest printed: {mounted, mode, os, checks: {path: what}, done}."""
    out: dict[str, Any] = {"mounted": False, "mode": "", "os": "", "checks": {}, "done": False}
    for line in text.replace("\r", "").splitlines():
        word, _, rest = line.partition(" ")
        if word == "ROOT_MOUNTED":
            fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
            out.update(mounted=True, mode=fields.get("mode", ""), os=fields.get("os", "").replace("_", " "))
        elif word == "SVCHECK" and " " in rest:
            path, what = rest.split(" ", 1)
            out["checks"][path] = what.strip()
        elif word in ("ROOT_CHECKED", "ROOT_FAILED"):
            out["done"] = True
    return out


def qemu_command(disk: Path, guest: Path, cmdline: str, *, accel: str, rw: bool, log: Path) -> list[str]:
    drive = f"file={disk},if=virtio,format=raw," + ("snapshot=on" if rw else "readonly=on")
    cpu = ["-cpu", "host,-arch-capabilities"] if accel == "kvm" else []
    return ["qemu-system-x86_64", "-machine", "pc", "-accel", accel, *cpu, "-m", "256", "-nodefaults",
            "-no-reboot", "-display", "none", "-kernel", str(guest / "vmlinuz"), "-initrd", str(guest / "initrd.img"),
            "-drive", drive, "-append", cmdline, "-serial", f"file:{log}"]


def _wait(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "ROOT_CHECKED" in text or "ROOT_FAILED" in text or proc.poll() is not None:
            time.sleep(0.1)
            return log.read_text(errors="replace") if log.exists() else text
        time.sleep(0.2)
    return text


def boot_check(disk: Path, checks: Sequence[str] = (), *, rw: bool = False, accel: str | None = None,
               timeout: float = BOOT_TIMEOUT, progress: Progress | None = None) -> dict[str, Any]:
    """Boots the guest on `disk` and returns what it saw (parse_console's dict, plus `seconds`
    and `accel`); BootError if it did not get as far as mounting the disk and answering."""
    guest = guest_dir()
    cmdline = kernel_cmdline(checks, rw=rw)
    # probe_accel answers in libvirt's words: domain type "qemu" is QEMU's TCG
    accel = accel or {"qemu": "tcg"}.get(a := probe_accel(guest, Path(default_state_dir())), a)
    with tempfile.TemporaryDirectory(prefix="softudc-boot-") as tmp:
        log = Path(tmp) / "console.log"
        if progress:
            progress(f"boot: {disk.name} under {accel}, checking {len(checks)} paths")
        started = time.monotonic()
        try:
            proc = subprocess.Popen(qemu_command(disk, guest, cmdline, accel=accel, rw=rw, log=log),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise BootError("qemu-system-x86_64 is not installed (`make bootstrap`)") from None
        try:
            text = _wait(proc, log, timeout)
        finally:
            proc.kill()
            _, err = proc.communicate()
        seen = parse_console(text)
        tail = "\n".join(text.splitlines()[-15:])
        if not seen["done"]:
            why = f"qemu said: {err.decode(errors='replace').strip()}" if err.strip() else f"console:\n{tail}"
            raise BootError(f"the guest did not check {disk} within {timeout:.0f} s; {why}")
        if not seen["mounted"]:
            raise BootError(f"the guest could not mount {disk} as ext4; console:\n{tail}")
    seen["seconds"] = round(time.monotonic() - started, 1)
    seen["accel"] = accel
    return seen
