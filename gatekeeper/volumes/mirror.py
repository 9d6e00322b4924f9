"""Mirrored volumes on the VM's host: one small qemu-storage-daemon per volume holding a `quorum`
node over the two replicas' NBD+TLS exports, served to the local QEMU over a unix socket.

Each mirror's daemon holds, by QMP id:
    tls0       tls-creds-x509, endpoint=client: this host's join certificate (the replicas' storage
               hosts admit it by their allow lists)
    r<N>       an `nbd` client node per replica (`<volume>.r<N>` on its storage host), reconnect-delay 0:
               a replica whose server is gone fails its requests at once
    quorum0    `quorum`, vote-threshold 1, read-pattern fifo, children = the replicas' nodes: a write
               completes once every child has answered (and succeeds if one has it); a read goes to
               the first child and, if that fails, the next
    the NBD server on ``<dir>/nbd.sock`` exporting quorum0 writable as the volume's name (no TLS:
               a local socket, for the VM's QEMU only)

A lost replica is replaced by ``blockdev-mirror`` of quorum0 into the new replica's node with
``replaces`` = the lost child's node (sync full, copy-mode write-blocking): at ``block-job-complete``
QEMU swaps the new node into the lost child's place in the quorum. This is QEMU's own path for
replacing a broken quorum child (quorum's ``bdrv_recurse_can_replace``); it has no window in which
writes would reach only one replica, which ``x-blockdev-change`` (detach, attach) after a mirror
job would have: the job's target may not have a second writer while the job runs.

A replica's health: ``failed`` once its storage host stops answering on the export's port (a TCP
connect each round, ``PROBE_S``); a failed child stays failed (its NBD client does not reconnect:
it missed writes) until replaced. QEMU's QUORUM_REPORT_BAD events would name a failed child even
when its server came back between two probes, but qsd has one QMP monitor, which a listener would
hold (the commands here connect per call): that needs a second ``--monitor`` (daemon.py).

State per mirror in ``<run_dir>/<dir>/mirror.json`` (replicas, children, the rebuild), so a restarted
gatekeeper adopts the daemon.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatekeeper.volumes.daemon import StorageDaemon
from gatekeeper.volumes.qmp import QmpClient, QmpConnectionError, QmpError
from softudc.atomicfile import write_atomic

log = logging.getLogger("gatekeeper.volumes")
REPLICA_RE = re.compile(r"\.r([0-9]{1,6})$")
PROBE_S = 1.0
JOB = "rebuild"
HEALTHY, FAILED, REBUILDING = "healthy", "failed", "rebuilding"


class MirrorError(RuntimeError):
    """A mirror's daemon could not be set up or changed; the message says which volume and why."""


@dataclass(frozen=True)
class Replica:
    """One replica of a mirrored volume: the pool volume `name` (`<volume>.r<N>`) on `host`'s export."""

    name: str
    host: str
    address: str
    port: int

    @property
    def node(self) -> str:
        """Its node name in the mirror's daemon: r<N> (node names are at most 31 bytes)."""
        m = REPLICA_RE.search(self.name)
        if m is None:
            raise MirrorError(f"replica {self.name}: a replica's name ends in .r<N>")
        return f"r{m.group(1)}"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "address": self.address, "port": self.port}


def nbd_node(r: Replica) -> dict[str, Any]:
    return {"driver": "nbd", "node-name": r.node, "export": r.name, "tls-creds": "tls0", "reconnect-delay": 0,
            "server": {"type": "inet", "host": r.address, "port": str(r.port)}}


def reachable(address: str, port: int, timeout: float = PROBE_S) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def plan_rebuild(children: list[str], wanted: dict[str, Replica]) -> tuple[str, str] | None:
    """(child node to replace, new replica's node), or None: the first child not wanted gives its
    place to the first wanted replica that is no child (pure)."""
    gone = [c for c in children if c not in wanted]
    new = [n for n in sorted(wanted) if n not in children]
    return (gone[0], new[0]) if gone and new else None


class Mirrors:
    """Every mirrored volume's quorum daemon on this host (one per volume a local VM opens)."""

    def __init__(self, run_dir: Path, tls_dir: Path) -> None:
        self.run_dir, self.tls_dir = run_dir, tls_dir
        self._bad: dict[str, set[str]] = {}  # volume -> nodes seen failed (kept until replaced)

    def _dir(self, name: str) -> Path:
        return self.run_dir / ("m-" + hashlib.sha256(name.encode()).hexdigest()[:24])

    def socket_path(self, name: str) -> Path:
        """The unix socket the VM's QEMU opens (libvirt `<host transport='unix' socket=...>`)."""
        return self._dir(name) / "nbd.sock"

    def daemon(self, name: str) -> StorageDaemon:
        return StorageDaemon(self._dir(name))

    def _state(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self._dir(name) / "mirror.json").read_text())
            return data
        except (OSError, ValueError):
            return None

    def _save(self, name: str, state: dict[str, Any]) -> None:
        write_atomic(self._dir(name) / "mirror.json", json.dumps(state, sort_keys=True).encode())  # read by the report

    def names(self) -> list[str]:
        out = []
        for path in self.run_dir.glob("m-*/mirror.json"):
            try:
                out.append(str(json.loads(path.read_text())["volume"]))
            except (OSError, ValueError, KeyError):
                continue
        return sorted(out)

    def ensure(self, name: str, replicas: list[Replica]) -> list[str]:
        """Make the mirror's daemon serve `replicas` (two): start it, or rebuild onto a new replica
        that replaces one no longer wanted. What was done."""
        wanted = {r.node: r for r in replicas}
        state = self._state(name)
        if state is None or not self.daemon(name).adopt():
            if len(wanted) < 2:
                raise MirrorError(f"mirrored volume {name}: {len(wanted)} replica(s) known, it starts with two")
            self._start(name, list(wanted.values()))
            return [f"mirror.start {name}"]
        return self._step(name, state, wanted)

    def _start(self, name: str, replicas: list[Replica]) -> None:
        daemon = self.daemon(name)
        daemon.stop()
        daemon.start()
        sock = self.socket_path(name)
        sock.unlink(missing_ok=True)
        try:
            with daemon.qmp() as q:
                q.execute("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0", "dir": str(self.tls_dir),
                                           "endpoint": "client"})
                for r in replicas:
                    q.execute("blockdev-add", **nbd_node(r))
                q.execute("blockdev-add", **{"driver": "quorum", "node-name": "quorum0", "vote-threshold": 1,
                                             "read-pattern": "fifo", "children": [r.node for r in replicas]})
                q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(sock)}})
                q.execute("block-export-add", type="nbd", id="vol", **{"node-name": "quorum0", "name": name,
                                                                       "writable": True})
        except (QmpError, QmpConnectionError) as e:
            daemon.stop()
            raise MirrorError(f"mirrored volume {name}: {e}; see {daemon.run_dir / 'qsd.log'}") from None
        self._bad.pop(name, None)
        self._save(name, {"volume": name, "replicas": {r.node: r.as_json() for r in replicas},
                          "children": [r.node for r in replicas], "job": None})

    def _step(self, name: str, state: dict[str, Any], wanted: dict[str, Replica]) -> list[str]:
        """One step of a rebuild: finish a job that is ready, or start one for a replaced replica."""
        job = state.get("job")
        with self.daemon(name).qmp() as q:
            if job is not None:
                return self._finish(name, state, q)
            plan = plan_rebuild(state["children"], wanted)
            if plan is None:
                return []
            old, new = plan
            r = wanted[new]
            q.execute("blockdev-add", **nbd_node(r))
            q.execute("blockdev-mirror", **{"job-id": JOB, "device": "quorum0", "target": new, "replaces": old,
                                            "sync": "full", "copy-mode": "write-blocking"})
        state["replicas"][new] = r.as_json()
        state["job"] = {"replaces": old, "target": new}
        self._save(name, state)
        return [f"mirror.rebuild {name}: {old} -> {r.name} on {r.host}"]

    def _finish(self, name: str, state: dict[str, Any], q: QmpClient) -> list[str]:
        job = state["job"]
        jobs = {j["device"]: j for j in q.execute("query-block-jobs")}
        running = jobs.get(JOB)
        if running is not None:
            if running.get("ready"):
                q.execute("block-job-complete", device=JOB)
            return []
        old, new = job["replaces"], job["target"]
        try:  # replaced, the old node has no parent left (the monitor's reference goes with this)
            q.execute("blockdev-del", **{"node-name": old})
        except QmpError:  # the job failed or was cancelled: the quorum still has the old child
            q.execute("blockdev-del", **{"node-name": new})
            state["replicas"].pop(new, None)
            state["job"] = None
            self._save(name, state)
            return [f"mirror.rebuild {name}: {new} did not replace {old}; retried next round"]
        state["children"] = [new if c == old else c for c in state["children"]]
        state["replicas"].pop(old, None)
        state["job"] = None
        self._bad.get(name, set()).discard(old)
        self._save(name, state)
        return [f"mirror.rebuilt {name}: {new} replaced {old}"]

    def health(self, name: str) -> dict[str, Any]:
        """{replicas: {replica name: healthy|failed|rebuilding}, progress: 0..1 while rebuilding}."""
        state = self._state(name)
        if state is None:
            return {"replicas": {}}
        bad = self._bad.setdefault(name, set())
        out: dict[str, str] = {}
        for node in state["children"]:
            r = state["replicas"].get(node, {})
            if node in bad or not reachable(r.get("address", ""), int(r.get("port", 0))):
                bad.add(node)
            out[r.get("name", node)] = FAILED if node in bad else HEALTHY
        job = state.get("job")
        result: dict[str, Any] = {"replicas": out}
        if job is not None:
            target = state["replicas"].get(job["target"], {})
            out[target.get("name", job["target"])] = REBUILDING
            result["progress"] = self._progress(name)
        return result

    def _progress(self, name: str) -> float:
        try:
            with self.daemon(name).qmp() as q:
                for j in q.execute("query-block-jobs"):
                    if j["device"] == JOB and j.get("len"):
                        return round(min(1.0, int(j["offset"]) / int(j["len"])), 3)
        except (QmpError, QmpConnectionError):
            pass
        return 0.0

    def stop(self, name: str) -> None:
        """Stop the mirror's daemon (no VM here opens the volume any more) and forget it."""
        self.daemon(name).stop()
        (self._dir(name) / "mirror.json").unlink(missing_ok=True)
        self.socket_path(name).unlink(missing_ok=True)
        self._bad.pop(name, None)
