"""NBD exports over TLS, one qemu-storage-daemon per exported volume, each with its own allow list.

Why one daemon per export and not one per host: QEMU has one NBD server per process, and its
``tls-authz`` belongs to that server (nbd-server-start), checked at the TLS handshake, before the
client names an export. Per-volume authorisation therefore needs one NBD server, hence one qsd,
per volume; each listens on the host's underlay address at its own port (``base_port`` + slot).

Each export's daemon holds, by QMP id:
    tls0     tls-creds-x509, endpoint=server, verify-peer=on: the host's server certificate;
             clients need a certificate from the same CA
    authz0   authz-list, policy deny, one ``exact`` allow rule per allowed host's DN (``CN=<host>``);
             replaced (object-del + object-add) to change who may connect: QEMU resolves
             tls-authz at each connection, so new connections see the new list at once
    file0 / vol0   the volume's file and qcow2 nodes;  export id and NBD name = the volume's name
State per export in ``<run_dir>/<volume>/export.json`` (port, allowed), so a restarted gatekeeper
adopts running daemons and restarts missing ones.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

from gatekeeper.volumes import crypt
from gatekeeper.volumes.daemon import DaemonError, StorageDaemon
from gatekeeper.volumes.pool import Pool, VolumeError, check_name
from gatekeeper.volumes.qmp import QmpClient, QmpConnectionError, QmpError
from softudc.atomicfile import write_atomic

log = logging.getLogger("gatekeeper.volumes")
SHORT_NAME = 40  # longer export names get a digest for their run directory
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_ALLOWED = 256


def check_hosts(allowed: Any) -> list[str]:
    if not isinstance(allowed, list) or len(allowed) > MAX_ALLOWED:
        raise VolumeError(f"allowed: a list of at most {MAX_ALLOWED} host names")
    for host in allowed:
        if not isinstance(host, str) or not HOST_RE.match(host):
            raise VolumeError(f"allowed: {host!r} is not a host name (the CN of its certificate)")
    return sorted(set(allowed))


def nodelay_listener(address: str, port: int) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY, for qsd's NBD server: on Linux the connections
    accepted on it inherit TCP_NODELAY. QEMU 7.2's NBD server sends a reply as two TLS records
    (header, then payload) and sets no TCP_NODELAY (8.0 corks); with Nagle the second waited for
    the client's delayed ACK, ~40 ms per request (docs/volumes.md "Slow reads")."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((address, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def authz_rules(allowed: list[str]) -> list[dict[str, str]]:
    """QAuthZListRule entries: GnuTLS renders our certificates' subject as ``CN=<host>``."""
    return [{"match": f"CN={h}", "policy": "allow", "format": "exact"} for h in allowed]


class Exports:
    def __init__(self, pool: Pool, run_dir: Path, tls_dir: Path, address: str, base_port: int = 10809,
                 max_exports: int = 64) -> None:
        self.pool, self.run_dir, self.tls_dir = pool, run_dir, tls_dir
        self.address, self.base_port, self.max_exports = address, base_port, max_exports
        run_dir.mkdir(parents=True, exist_ok=True)

    def _dir(self, name: str) -> Path:
        """The export's run directory: its name, or for a long one (a farm volume's id) a digest
        of it, so the monitor socket's path stays within a unix socket's 108 bytes."""
        if len(name) <= SHORT_NAME:
            return self.run_dir / name
        return self.run_dir / ("v-" + hashlib.sha256(name.encode()).hexdigest()[:24])

    def _state_path(self, name: str) -> Path:
        return self._dir(name) / "export.json"

    def _state(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._state_path(name).read_text())
            return data
        except (OSError, ValueError):
            return None

    def _save(self, name: str, state: dict[str, Any]) -> None:
        """Replaced whole (a rename), as every state file here: after a crash mid-write, or to a
        reader meanwhile, a half-written record would read as "not exported"."""
        write_atomic(self._state_path(name), json.dumps(state).encode())

    def daemon(self, name: str) -> StorageDaemon:
        return StorageDaemon(self._dir(name))

    def exported(self, name: str) -> bool:
        return self._state(name) is not None

    def names(self) -> list[str]:
        names = []
        for path in self.run_dir.glob("*/export.json"):
            try:
                names.append(str(json.loads(path.read_text()).get("volume") or path.parent.name))
            except (OSError, ValueError):
                names.append(path.parent.name)  # unreadable: named by its directory, as before
        return sorted(names)

    def _free_port(self) -> int:
        used = {int(s["port"]) for n in self.names() if (s := self._state(n))}
        for port in range(self.base_port, self.base_port + self.max_exports):
            if port not in used:
                return port
        raise VolumeError(f"all {self.max_exports} export ports from {self.base_port} are in use; unexport a volume")

    def export(self, name: str, allowed: Any, key: str | None = None) -> dict[str, Any]:
        """Export a pool volume over NBD+TLS to the hosts in `allowed`; its export record. `key`:
        an encrypted volume's (gatekeeper/volumes/crypt.py), handed to its daemon over QMP only."""
        hosts = check_hosts(allowed)
        if not self.pool.exists(name):
            raise VolumeError(f"no volume {name} in {self.pool.directory}")
        if self.exported(name):
            raise VolumeError(f"volume {name} is already exported; use volume.allow to change its hosts")
        state = {"port": self._free_port(), "allowed": hosts, "volume": name, "encrypted": key is not None}
        try:
            self._launch(name, state, key)
        except Exception:
            self.daemon(name).stop()
            raise
        self._save(name, state)
        return self.describe(name)

    def _launch(self, name: str, state: dict[str, Any], key: str | None = None) -> None:
        daemon = self.daemon(name)
        listener = self._listen(name, int(state["port"]))
        with listener:
            daemon.start(args=self._server_args(state["allowed"], listener.fileno()), pass_fds=[listener.fileno()])
        with daemon.qmp() as q:
            q.execute("blockdev-add", **{"driver": "file", "node-name": "file0",
                                         "filename": str(self.pool.path(name))})
            encrypt: dict[str, Any] = {}
            if key is not None:
                q.execute("object-add", **crypt.secret_object(key))
                encrypt = {"encrypt": crypt.encrypt_options()}
            q.execute("blockdev-add", **{"driver": "qcow2", "node-name": "vol0", "file": "file0", **encrypt})
            q.execute("block-export-add", type="nbd", id=name, **{"node-name": "vol0", "name": name,
                                                                   "writable": True})

    def _listen(self, name: str, port: int, wait: float = 2.0) -> socket.socket:
        """The export's listening socket; a port still held for a moment (its daemon just stopped:
        seen under load in the unit tests) is tried again for `wait` s before the export fails."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return nodelay_listener(self.address, port)
            except OSError as e:
                if e.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise DaemonError(f"export {name}: cannot listen on {self.address}:{port}: {e}") from None
            time.sleep(0.05)

    def _server_args(self, allowed: list[str], fd: int) -> list[str]:
        """qsd's options for tls0, authz0 and the NBD server on the inherited listening socket `fd`
        (qsd takes a socket descriptor on its command line only: QMP's getfd is QEMU's)."""
        tls = {"qom-type": "tls-creds-x509", "id": "tls0", "dir": str(self.tls_dir), "endpoint": "server",
               "verify-peer": True}
        authz = {"qom-type": "authz-list", "id": "authz0", "policy": "deny", "rules": authz_rules(allowed)}
        return ["--object", json.dumps(tls), "--object", json.dumps(authz),
                "--nbd-server", f"addr.type=fd,addr.str={fd},tls-creds=tls0,tls-authz=authz0"]

    @staticmethod
    def _set_authz(q: QmpClient, allowed: list[str], replace: bool) -> None:
        if replace:
            q.execute("object-del", id="authz0")
        q.execute("object-add", **{"qom-type": "authz-list", "id": "authz0", "policy": "deny",
                                   "rules": authz_rules(allowed)})

    def allow(self, name: str, allowed: Any) -> dict[str, Any]:
        """Replace the export's allowed hosts (a VM moved): new connections see it at once."""
        hosts = check_hosts(allowed)
        state = self._state(name)
        if state is None:
            raise VolumeError(f"volume {name} is not exported; export it first")
        with self.daemon(name).qmp() as q:
            self._set_authz(q, hosts, replace=True)
        state["allowed"] = hosts
        self._save(name, state)
        return self.describe(name)

    def unexport(self, name: str) -> None:
        """Stop the export's daemon (closing its clients) and forget it. Idempotent."""
        self.daemon(name).stop()
        self._state_path(name).unlink(missing_ok=True)

    def describe(self, name: str) -> dict[str, Any]:
        state = self._state(name)
        if state is None:
            raise VolumeError(f"volume {name} is not exported")
        pid = self.daemon(name).pid()
        return {"volume": name, "address": self.address, "port": state["port"], "allowed": state["allowed"],
                "pid": pid, "uri": f"nbds://{self.address}:{state['port']}/{name}", "running": pid is not None}

    def snapshot(self, name: str, snapshot: str) -> None:
        """An internal snapshot of an exported volume, taken by its daemon (QMP), consistent with
        the writes it has acknowledged; the export goes on."""
        check_name(snapshot)
        if self.pool.exists(name) and snapshot in self.pool.info(name).snapshots:
            raise VolumeError(f"volume {name} already has a snapshot {snapshot}; pick another name")
        with self.daemon(name).qmp() as q:
            q.execute("blockdev-snapshot-internal-sync", device="vol0", name=snapshot)

    def stats(self, name: str) -> dict[str, int]:
        """Bytes and operations through the export (QEMU's blockstats of the qcow2 node)."""
        with self.daemon(name).qmp() as q:
            for entry in q.execute("query-blockstats", **{"query-nodes": True}):
                if entry.get("node-name") == "vol0":
                    s = entry["stats"]
                    return {k: int(s[k]) for k in ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations")}
        return {}

    def restore(self) -> list[str]:
        """After a gatekeeper restart: adopt each recorded export's daemon, or start it again.
        The names restarted (an adopted daemon is left as it is)."""
        restarted = []
        for name in self.names():
            if self.daemon(name).adopt():
                continue
            state = self._state(name)
            if state is None or not self.pool.exists(name) or state.get("encrypted"):
                self.unexport(name)  # an encrypted one comes back with the next desired state (its key)
                continue
            try:
                self._launch(name, state)
            except (DaemonError, QmpError, QmpConnectionError) as e:  # the others still come back
                log.warning("export %s not restored (kept for the next start): %s", name, e)
                self.daemon(name).stop()
                continue
            restarted.append(name)
        return restarted
