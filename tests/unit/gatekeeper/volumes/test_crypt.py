"""Encrypted volumes against real qemu-img and qsd: a pattern written through the export (NBD+TLS,
qemu-io with a client certificate) reads back, and is not in the file on disk (in a plain volume it
is: the check can fail); the key is on no command line, in no state file; a wrong key opens nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.volumes import crypt
from gatekeeper.volumes.converge import VolumeAction, volume_actions
from gatekeeper.volumes.pool import VolumeError
from gatekeeper.volumes.service import VolumeService
from softudc.model.hoststate import DesiredVolume

MiB = 1 << 20
KEY = "5e" * 32


def qemu_io(export: dict[str, object], client: Path, *commands: str) -> subprocess.CompletedProcess[str]:
    opts = f"driver=nbd,host=127.0.0.1,port={export['port']},export={export['volume']},tls-creds=t0"
    argv = ["qemu-io", "--object", f"tls-creds-x509,id=t0,dir={client},endpoint=client", "--image-opts"]
    for c in commands:
        argv += ["-c", c]
    return subprocess.run([*argv, opts], capture_output=True, text=True, timeout=30, check=False)


def test_an_encrypted_volume_holds_no_plaintext_and_a_plain_one_does(service: VolumeService, certs: Path) -> None:
    service.create("sec", 8 * MiB, key=KEY)
    service.create("plain", 8 * MiB)
    assert crypt.is_encrypted(service.pool, "sec") and not crypt.is_encrypted(service.pool, "plain")
    for name, key in (("sec", KEY), ("plain", None)):
        export = service.export(name, ["h1"], key)
        w = qemu_io(export, certs / "h1", "write -P 0x53 0 1M")
        assert w.returncode == 0 and "wrote" in w.stdout, w.stderr
        r = qemu_io(export, certs / "h1", "read -P 0x53 0 1M")
        assert "Pattern verification failed" not in r.stdout and "read 1048576/1048576" in r.stdout, r.stdout
        pid = export["pid"]
        assert KEY not in Path(f"/proc/{pid}/cmdline").read_text()
        state = service.exports._state_path(name).read_text()
        assert KEY not in state and ('"encrypted": true' in state) == (key is not None)
        service.unexport(name)
    sec, plain = (service.pool.path(n).read_bytes() for n in ("sec", "plain"))
    assert b"S" * 4096 in plain and b"S" * 4096 not in sec  # 0x53 = "S": the plain file holds it, the LUKS one not
    assert KEY.encode() not in sec


def test_a_wrong_key_opens_nothing_and_a_bad_key_is_refused(service: VolumeService) -> None:
    service.create("sec", 8 * MiB, key=KEY)
    with pytest.raises(Exception, match=r"(?i)invalid password|key"):
        service.export("sec", ["h1"], "00" * 32)
    assert not service.exports.exported("sec")
    with pytest.raises(VolumeError, match="64 lowercase hex digits"):
        service.create("sec2", 8 * MiB, key="not-a-key")
    assert not service.pool.exists("sec2")


def test_restore_leaves_an_encrypted_export_to_the_next_desired_state(service: VolumeService) -> None:
    service.create("sec", 8 * MiB, key=KEY)
    service.export("sec", ["h1"], KEY)
    pid = service.exports.describe("sec")["pid"]
    assert pid is not None
    service.exports.daemon("sec").stop()  # its daemon died while the gatekeeper was down
    assert service.exports.restore() == [] and not service.exports.exported("sec")
    service.export("sec", ["h1"], KEY)  # the next round's export, with the key
    assert service.exports.describe("sec")["running"]


def test_the_key_goes_to_create_and_export_and_is_never_shown() -> None:
    want = [DesiredVolume(name="sec", size_bytes=MiB, allowed=["h1"], key=KEY)]
    actions = volume_actions(want, {}, {})
    assert [(a.op, a.args.get("key")) for a in actions] == [("create", KEY), ("export", KEY)]
    assert all(KEY not in repr(a) and KEY not in str(a) for a in actions)
    assert KEY not in repr(want[0])
    assert VolumeAction("create", "x", {}).args == {}


def test_creating_is_tried_again_when_qemu_cannot_time_its_pbkdf(service: VolumeService, monkeypatch: Any) -> None:
    real, calls = subprocess.run, []

    def flaky(argv: list[str], **kw: Any) -> Any:
        if argv[1] != "create":
            return real(argv, **kw)
        calls.append(argv[1])
        if len(calls) < 3:  # what qemu-img says on a busy host, before it writes anything
            return subprocess.CompletedProcess(argv, 1, "", f"qemu-img: x.qcow2: {crypt.CPU_CLOCK_MISS}\n")
        return real(argv, **kw)

    monkeypatch.setattr("subprocess.run", flaky)
    # two made-up misses, then the real qemu-img: it may miss a few times itself (1 in 5 here, idle)
    assert service.create("sec", 8 * MiB, key=KEY)["size_bytes"] == 8 * MiB and len(calls) >= 3
    calls.clear()
    monkeypatch.setattr("subprocess.run", lambda argv, **kw: subprocess.CompletedProcess(argv, 1, "", "other"))
    with pytest.raises(VolumeError, match="other"):
        service.create("sec2", 8 * MiB, key=KEY)
    misses: list[list[str]] = []

    def always_missing(argv: list[str], **kw: Any) -> Any:
        misses.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", f"qemu-img: x.qcow2: {crypt.CPU_CLOCK_MISS}\n")

    monkeypatch.setattr("subprocess.run", always_missing)
    with pytest.raises(VolumeError, match=f"in {crypt.CREATE_ATTEMPTS} attempts: .* when the host is less busy"):
        service.create("sec3", 8 * MiB, key=KEY)
    assert len(misses) == crypt.CREATE_ATTEMPTS
