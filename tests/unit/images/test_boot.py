from __future__ import annotations

from pathlib import Path

import pytest

from softudc.images.boot import BootError, kernel_cmdline, parse_console, qemu_command

CONSOLE = """INIT_REACHED uptime=1.90\r
ROOT_MOUNTED dev=/dev/vda mode=ro os=Debian_GNU/Linux_12_(bookworm)\r
SVCHECK /etc/hostname sha256=4ded89b3\r
SVCHECK /etc/os-release symlink=../usr/lib/os-release\r
SVCHECK /nope missing\r
ROOT_CHECKED dev=/dev/vda\r
"""


def test_cmdline_keeps_the_guest_defaults_and_adds_the_root() -> None:
    line = kernel_cmdline(["/etc/hostname", "/usr/bin"])
    assert line.startswith("console=ttyS0 ") and "svhttpd=0" in line
    assert line.endswith("svroot=/dev/vda svcheck=/etc/hostname,/usr/bin")
    assert "svrootrw=1" in kernel_cmdline([], rw=True) and "svcheck" not in kernel_cmdline([])


@pytest.mark.parametrize("bad", ["etc/rel", "/a b", "/a,b", '/a"b'])
def test_cmdline_refuses_paths_the_guest_cannot_split(bad: str) -> None:
    with pytest.raises(BootError, match="absolute paths"):
        kernel_cmdline([bad])


def test_cmdline_too_long() -> None:
    with pytest.raises(BootError, match="too long"):
        kernel_cmdline(["/" + "x" * 100] * 30)


def test_parse_console() -> None:
    seen = parse_console(CONSOLE)
    assert seen == {"mounted": True, "mode": "ro", "os": "Debian GNU/Linux 12 (bookworm)", "done": True,
                    "checks": {"/etc/hostname": "sha256=4ded89b3", "/etc/os-release": "symlink=../usr/lib/os-release",
                               "/nope": "missing"}}
    assert parse_console("INIT_REACHED\nROOT_FAILED dev=/dev/vda\n")["mounted"] is False
    assert parse_console("")["done"] is False


def test_qemu_never_writes_the_cached_image(tmp_path: Path) -> None:
    ro = qemu_command(tmp_path / "d.img", tmp_path, "x", accel="tcg", rw=False, log=tmp_path / "log")
    rw = qemu_command(tmp_path / "d.img", tmp_path, "x", accel="kvm", rw=True, log=tmp_path / "log")
    assert any("readonly=on" in a for a in ro) and any("snapshot=on" in a for a in rw)
    assert "-cpu" in rw and "-cpu" not in ro
