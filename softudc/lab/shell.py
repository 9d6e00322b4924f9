"""Running `ip` and friends with errors that say what failed and what to do."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence

from softudc.pids import pid_alive as pid_alive  # re-exported: the lab calls shell.pid_alive


class CommandError(RuntimeError):
    pass


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandError(
            f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return run(argv, check=check)


def in_netns(netns: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
    return run(["ip", "netns", "exec", netns, *argv], check=check, timeout=timeout)


def netns_list() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    out = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def stop_pid(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Always by PID, never by name."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def set_sysctl(netns: str, key: str, value: str) -> None:
    in_netns(netns, "sysctl", "-qw", f"{key}={value}")


def link(a_ns: str, a_name: str, b_ns: str, b_name: str, mtu: int) -> None:
    """A veth pair created directly inside the two namespaces (no transient name in the root ns)."""
    ip("link", "add", a_name, "netns", a_ns, "mtu", str(mtu), "type", "veth",
       "peer", "name", b_name, "netns", b_ns, "mtu", str(mtu))
    ip("link", "set", b_name, "master", "br0", "up", netns=b_ns)
