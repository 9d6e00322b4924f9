"""The keys of encrypted volumes (issue 13 item 2), made and kept by the manager.

One manager-wide volume secret (32 random bytes) is kept in the store (kind `volumekey`, name
`master`: the store is the manager's private state, 0700/0600, like the VNET secrets), made the
first time an encrypted volume needs a key. A volume's key is HKDF-SHA256(secret, its id): no
write when a desired state is served, the same key for the volume whatever manager leads, and a
kept volume (`keep: true`) opens again when a farm of the same name wants it back.

A key is the LUKS passphrase of the volume's qcow2 (`encrypt.format=luks`); QEMU makes a random
LUKS master key per volume and keeps it in the qcow2 header, sealed by the passphrase. The key
goes to the volume's storage host only, in its desired state (mutual TLS), and from there to its
qemu-storage-daemon as a QMP `secret` object (gatekeeper/volumes/crypt.py): never in a log, on a
command line, or in a file on the host. Deleting a volume deletes its header and with it what
the key opened; the key itself is never shown by the API.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from softudc.manager.store import Conflict, Store

KIND, MASTER = "volumekey", "master"
INFO = b"softudc volume key v1\0"


def derive(secret_hex: str, volume: str) -> str:
    """The volume's key (64 hex digits) from the manager-wide secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO + volume.encode())
    return hkdf.derive(bytes.fromhex(secret_hex)).hex()


def new_secret() -> dict[str, Any]:
    return {"secret": secrets.token_hex(32)}


class VolumeKeys:
    """Each encrypted volume's key from the store's volume secret (made once, under a lock)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._secret: str | None = None

    def secret(self) -> str:
        if self._secret is None:
            with self._lock:
                obj = self.store.get(KIND, MASTER)
                if obj is None or obj.deleted:
                    with contextlib.suppress(Conflict):  # expect=0: unless another manager made it meanwhile
                        self.store.put(KIND, MASTER, new_secret(), expect=0)
                    obj = self.store.get(KIND, MASTER)
                assert obj is not None
                self._secret = str(obj.spec["secret"])
        return self._secret

    def __call__(self, volume: str) -> str:
        return derive(self.secret(), volume)
