"""The storage service the gatekeeper runs: its pool and its exports, behind the local API.

Operations (JSON over the gatekeeper's local API):
    volume.create  name, size_bytes, backing=None      volume.list
    volume.delete  name  (refused while exported)      volume.describe name
    volume.export  name, allowed=[host...]             volume.allow  name, allowed=[host...]
    volume.unexport name                               pool.status
    volume.snapshot name, snapshot  (internal qcow2 snapshot; by QMP while exported)
    volume.create with backing and no size_bytes: a clone the backing's size
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatekeeper.volumes import crypt
from gatekeeper.volumes.exports import Exports
from gatekeeper.volumes.mirror import Mirrors
from gatekeeper.volumes.mirror_hold import MirrorKeeper
from gatekeeper.volumes.pool import Pool, VolumeError, check_name

log = logging.getLogger("gatekeeper.volumes")


class VolumeService:
    def __init__(self, pool_dir: Path, run_dir: Path, tls_dir: Path, address: str, base_port: int = 10809,
                 capacity_bytes: int | None = None, thin: bool = False) -> None:
        self.pool = Pool(pool_dir, capacity_bytes, thin)
        self.exports = Exports(self.pool, run_dir, tls_dir, address, base_port)
        self.mirrors = MirrorKeeper(Mirrors(run_dir, tls_dir))  # quorums of the mirrored volumes VMs here open

    def start(self) -> None:
        restarted = self.exports.restore()
        log.info("volumes: pool %s, %d export(s) (%s restarted)", self.pool.directory, len(self.exports.names()),
                 ", ".join(restarted) or "none")

    def create(self, name: str, size_bytes: int | None = None, backing: str | None = None,
               key: str | None = None) -> dict[str, Any]:
        """With `key`: a LUKS-encrypted qcow2 (gatekeeper/volumes/crypt.py)."""
        if key is not None:
            return crypt.create(self.pool, name, size_bytes, key, backing).as_json()
        return self.pool.create(name, size_bytes, backing).as_json()

    def delete(self, name: str) -> None:
        check_name(name)
        if self.exports.exported(name):
            raise VolumeError(f"volume {name} is exported (to {', '.join(self.exports.describe(name)['allowed'])}); "
                              "unexport it first (volume.unexport)")
        self.pool.delete(name)

    def describe(self, name: str) -> dict[str, Any]:
        out = self.pool.info(name).as_json()
        out["export"] = self.exports.describe(name) if self.exports.exported(name) else None
        return out

    def volumes(self) -> list[dict[str, Any]]:
        exported = set(self.exports.names())
        return [v.as_json() | {"exported": v.name in exported} for v in self.pool.volumes()]

    def export(self, name: str, allowed: list[str], key: str | None = None) -> dict[str, Any]:
        return self.exports.export(check_name(name), allowed, key)

    def allow(self, name: str, allowed: list[str]) -> dict[str, Any]:
        return self.exports.allow(check_name(name), allowed)

    def unexport(self, name: str) -> None:
        self.exports.unexport(check_name(name))

    def snapshot(self, name: str, snapshot: str) -> dict[str, Any]:
        if self.exports.exported(check_name(name)):
            self.exports.snapshot(name, snapshot)
            return self.describe(name)
        self.pool.snapshot(name, snapshot)
        return self.describe(name)

    def pool_status(self) -> dict[str, int]:
        """What the host report carries: `pool: {capacity_bytes, free_bytes}`."""
        return {"capacity_bytes": self.pool.capacity_bytes(), "free_bytes": self.pool.free_bytes()}

    def stop(self) -> None:
        """Nothing to do: export daemons outlive the gatekeeper and are adopted by the next one."""

    def operations(self) -> dict[str, Callable[..., Any]]:
        return {"volume.create": self.create, "volume.delete": self.delete, "volume.list": self.volumes,
                "volume.describe": self.describe, "volume.export": self.export, "volume.allow": self.allow,
                "volume.unexport": self.unexport, "volume.snapshot": self.snapshot, "pool.status": self.pool_status}
