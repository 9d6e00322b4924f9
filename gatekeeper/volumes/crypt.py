"""Encrypted volumes (issue 13 item 2): qcow2 with LUKS encryption, QEMU's own (`encrypt.format=luks`).

The key is the manager's (softudc/manager/volume_keys.py), 64 hex digits, handed over in this
host's desired state (mutual TLS). It is the LUKS passphrase; QEMU makes a random master key per
volume, sealed by it in the qcow2 header. The key never touches this host's disk nor a command line:

- creating: `qemu-img create ... --object secret,id=sec0,file=/dev/stdin`, the key written to
  qemu-img's stdin (a pipe; `ps` shows no key);
- serving: the export's qemu-storage-daemon gets it over its QMP socket as a `secret` object
  (`data`), and opens the qcow2 with `encrypt: {format: luks, key-secret: key0}`; clients get the
  decrypted volume over NBD+TLS only;
- nothing here logs it; export.json records `encrypted: true`, not the key, so a daemon that died
  is not restarted from the file (it waits for the next desired state, which brings the key).

PBKDF: the passphrase is 256 random bits, not a person's password, so stretching it buys nothing;
`encrypt.iter-time` is 10 ms instead of QEMU's 2 s, which every open would pay.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from gatekeeper.volumes.pool import MAX_SIZE, THIN_HEADROOM, Pool, Volume, VolumeError

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
SECRET_ID = "key0"
ITER_TIME_MS = 10
# QEMU times PBKDF iterations by the thread's CPU clock before it makes a LUKS header; the clock
# can read 0 ms for the first batch and qemu-img gives up with this: tried again. Seen on an idle
# host here in 8 of 40 runs, more often under load (CI ran out of 2 real attempts once).
CPU_CLOCK_MISS = "Unable to get accurate CPU usage"
CREATE_ATTEMPTS = 10


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise VolumeError("key: an encrypted volume's key is 64 lowercase hex digits (from the manager)")
    return key


def secret_object(key: str) -> dict[str, Any]:
    """The QMP object-add arguments of the key (sent over the daemon's monitor socket only)."""
    return {"qom-type": "secret", "id": SECRET_ID, "data": check_key(key), "format": "raw"}


def encrypt_options() -> dict[str, str]:
    """The qcow2 node's `encrypt` option of an encrypted volume (blockdev-add)."""
    return {"format": "luks", "key-secret": SECRET_ID}


def create(pool: Pool, name: str, size_bytes: int | None, key: str, backing: str | None = None) -> Volume:
    """A new LUKS-encrypted qcow2 volume in `pool` (with `backing`: a copy-on-write clone of a
    plain pool volume; the clone's own writes are encrypted)."""
    check_key(key)
    path = pool.path(name)
    if size_bytes is None and backing is not None and pool.exists(backing):
        size_bytes = pool.info(backing).size_bytes
    if path.exists():
        raise VolumeError(f"volume {name} already exists in {pool.directory}; delete it first or pick another name")
    if type(size_bytes) is not int or not 0 < size_bytes <= MAX_SIZE:
        raise VolumeError(f"volume {name}: size_bytes {size_bytes!r} must be an integer in 1..{MAX_SIZE}")
    need = min(size_bytes, THIN_HEADROOM) if pool.thin else size_bytes
    if need > pool.free_bytes():
        raise VolumeError(f"volume {name}: {size_bytes} bytes do not fit; the pool has {pool.free_bytes()} free")
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,file=/dev/stdin,format=raw",
            "-o", f"encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time={ITER_TIME_MS}"]
    if backing is not None:
        if not pool.exists(backing):
            raise VolumeError(f"volume {name}: backing volume {backing} is not in this pool")
        argv += ["-b", pool.path(backing).name, "-F", "qcow2"]
    _run_create([*argv, str(path), str(size_bytes)], key, name, path)
    return pool.info(name)


def _run_create(argv: list[str], key: str, name: str, path: Path) -> None:
    """qemu-img create with the key on its stdin, tried again when QEMU could not time its PBKDF."""
    for attempt in range(CREATE_ATTEMPTS):
        try:
            done = subprocess.run(argv, input=key, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise VolumeError(f"qemu-img create (encrypted {name}): {e}") from None
        if done.returncode == 0:
            return
        path.unlink(missing_ok=True)
        if CPU_CLOCK_MISS not in done.stderr:
            raise VolumeError(f"qemu-img create (encrypted {name}): {done.stderr.strip() or done.returncode}")
        if attempt == CREATE_ATTEMPTS - 1:
            raise VolumeError(f"qemu-img create (encrypted {name}): {done.stderr.strip()} in {CREATE_ATTEMPTS} "
                              "attempts: QEMU could not time its key derivation on this host; create it again "
                              "when the host is less busy")


def is_encrypted(pool: Pool, name: str) -> bool:
    """Whether the pool volume is LUKS-encrypted (its qcow2 header's crypt_method field, 2 = LUKS)."""
    with open(pool.path(name), "rb") as f:
        head = f.read(36)
    return len(head) == 36 and int.from_bytes(head[32:36], "big") == 2
