"""Which QEMU accelerator works here: `kvm` only if a probe boot of the test guest reaches its
init under KVM, else `qemu` (TCG) (reference/virt-lab.md §0: /dev/kvm on these machines is PVM,
opens fine and cannot run a stock kernel; libvirt's capabilities cannot be trusted either).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

PROBE_TIMEOUT = 15.0


def _has_vmx_or_svm() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def probe_accel(guest_dir: Path, cache_dir: Path) -> str:
    """'kvm' or 'qemu' (TCG); the answer is cached per kernel image and host kernel."""
    kernel = guest_dir / "vmlinuz"
    key = f"{os.uname().release}:{kernel.stat().st_size}:{int(kernel.stat().st_mtime)}"
    cache = cache_dir / "accel-probe.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return str(cached["accel"])
    except (OSError, ValueError):
        pass
    accel = "qemu"
    # No vmx/svm flag is a quick, certain negative; a flag is not proof (PVM), so boot to see.
    if os.path.exists("/dev/kvm") and _has_vmx_or_svm() and _boots_under_kvm(guest_dir):
        accel = "kvm"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": accel}))
    return accel


def _boots_under_kvm(guest_dir: Path) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "console.log"
        proc = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "pc", "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-m", "128",
             "-nodefaults", "-no-reboot", "-display", "none", "-kernel", str(guest_dir / "vmlinuz"),
             "-initrd", str(guest_dir / "initrd.img"), "-append", "console=ttyS0 quiet panic=-1 svhttpd=0",
             "-serial", f"file:{log}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + PROBE_TIMEOUT
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if log.exists() and "INIT_REACHED" in log.read_text(errors="replace"):
                    return True
                time.sleep(0.2)
            return False
        finally:
            proc.kill()
            proc.wait()
