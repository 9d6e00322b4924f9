"""One qemu-storage-daemon (qsd): started with only a QMP monitor, driven over QMP, stopped by
its PID, and adopted (not restarted) when the gatekeeper restarts.

qsd runs with ``--daemonize``: it detaches once its monitor socket is listening and writes its
PID to ``qsd.pid``, so it is nobody's child (no zombie) and outlives a gatekeeper restart.
Files in ``run_dir``: ``qmp.sock`` (the monitor), ``qsd.pid``, ``qsd.log`` (its stderr).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from gatekeeper.volumes.qmp import QmpClient, QmpConnectionError
from softudc.pids import pid_alive

QSD = "qemu-storage-daemon"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with its terminating NUL


class DaemonError(RuntimeError):
    """qsd could not be started or reached; the message says where to look."""


class StorageDaemon:
    def __init__(self, run_dir: Path, binary: str = QSD) -> None:
        self.run_dir = run_dir
        self.binary = binary

    @property
    def qmp_path(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "qsd.pid"

    def pid(self) -> int | None:
        """The PID of the running qsd, or None (no pidfile, or that process is gone)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def adopt(self) -> bool:
        """True if a qsd from an earlier gatekeeper still runs here and answers QMP."""
        if self.pid() is None:
            return False
        try:
            with self.qmp():
                return True
        except QmpConnectionError:
            return False

    def start(self, timeout: float = 10.0, args: Sequence[str] = (), pass_fds: Sequence[int] = ()) -> int:
        """Start qsd (or adopt the one running); its PID. `args`: more command-line options (after
        the monitor's); `pass_fds`: descriptors qsd inherits (e.g. a listening socket they name)."""
        if self.adopt():
            pid = self.pid()
            assert pid is not None
            return pid
        if len(bytes(self.qmp_path)) > MAX_SOCKET_PATH:
            raise DaemonError(f"{self.qmp_path}: {len(bytes(self.qmp_path))} bytes, more than the {MAX_SOCKET_PATH} "
                              "a Unix socket's path may have; configure a shorter run directory for the volumes")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.qmp_path, self.pid_path):
            stale.unlink(missing_ok=True)
        argv = [self.binary, "--chardev", f"socket,id=qmp0,path={self.qmp_path},server=on,wait=off",
                "--monitor", "chardev=qmp0", "--pidfile", str(self.pid_path), "--daemonize", *args]
        with open(self.run_dir / "qsd.log", "ab") as log:
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=timeout,
                                      check=False, pass_fds=tuple(pass_fds))
            except (OSError, subprocess.TimeoutExpired) as e:
                raise DaemonError(f"{self.binary} did not start: {e}") from None
        pid = self.pid()
        if done.returncode != 0 or pid is None:
            raise DaemonError(f"{self.binary} exited with {done.returncode}; see {self.run_dir / 'qsd.log'}")
        return pid

    def qmp(self) -> QmpClient:
        """A new QMP connection (use it in a `with`)."""
        return QmpClient(str(self.qmp_path))

    def stop(self, grace: float = 5.0) -> None:
        """Quit over QMP; SIGTERM, then SIGKILL, by PID if it lingers. Idempotent."""
        pid = self.pid()
        if pid is None:
            return
        try:
            with self.qmp() as q:
                q.execute("quit")
        except (QmpConnectionError, OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline += grace
            time.sleep(0.02)
        for stale in (self.qmp_path, self.pid_path):
            stale.unlink(missing_ok=True)
