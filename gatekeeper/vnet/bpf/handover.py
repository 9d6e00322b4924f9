"""A gatekeeper restart that keeps the eBPF data path carrying traffic (issue 16 item 7, docs/ebpf.md).

SIGUSR1 asks a gatekeeper to restart in place: it stops its threads, leaves the programs attached
and the maps pinned (`FastPath.stop(keep=True)`), and executes itself again (`reexec`): same PID,
same mount namespace (so the pins stay visible also under `ip netns exec`), the code on disk now,
and the TAP file descriptors of its eBPF VNETs inherited. They must cross: a TAP loses its carrier
when its last descriptor closes, and the bridge then disables the port (nothing reaches the TAP's
egress program). The new process takes them back (`take`) instead of opening the TAPs again,
re-adopts the pinned maps, replaces the programs in place and seeds its VARP cache from `ebs_fdb`;
meanwhile BPF carries known unicast on its own. SIGTERM still removes everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import NoReturn

log = logging.getLogger("gatekeeper.vnet.bpf")
ENV = "SOFTUDC_GATEKEEPER_TAPS"  # "vntap10=7,vntap20=8": TAP name = inherited descriptor
_ITEM = re.compile(r"([A-Za-z0-9_.-]{1,15})=(\d{1,9})")
_inherited: dict[str, int] | None = None


def parse(value: str) -> dict[str, int]:
    """The TAPs a predecessor handed over; an item that does not parse is logged and skipped."""
    out: dict[str, int] = {}
    for item in filter(None, value.split(",")):
        m = _ITEM.fullmatch(item)
        if m is None or int(m[2]) < 3:
            log.warning("%s: %r is not NAME=FD (FD >= 3); skipped", ENV, item)
            continue
        out[m[1]] = int(m[2])
    return out


def _table() -> dict[str, int]:
    global _inherited
    if _inherited is None:
        _inherited = parse(os.environ.pop(ENV, ""))
    return _inherited


def take(name: str) -> int | None:
    """The descriptor of TAP `name` handed over by the previous gatekeeper, or None (open it anew).
    A descriptor that is not open any more counts as none."""
    fd = _table().pop(name, None)
    if fd is None:
        return None
    try:
        os.fstat(fd)
    except OSError:
        log.warning("handed-over TAP %s: descriptor %d is not open; opening the TAP anew", name, fd)
        return None
    os.set_inheritable(fd, False)
    log.info("TAP %s taken over from the previous gatekeeper (descriptor %d)", name, fd)
    return fd


def close_rest() -> list[str]:
    """Close the handed-over TAPs nobody took (their VNETs are gone from the state); returns their names."""
    table = _table()
    names = sorted(table)
    for name in names:
        with contextlib.suppress(OSError):
            os.close(table.pop(name))
    return names


def env_for(taps: dict[str, int]) -> dict[str, str]:
    """The environment of the successor: this one's, plus the TAP table (made inheritable)."""
    for fd in taps.values():
        os.set_inheritable(fd, True)
    return {**os.environ, ENV: ",".join(f"{name}={fd}" for name, fd in sorted(taps.items()))}


def reexec(taps: dict[str, int]) -> NoReturn:
    """Become the next gatekeeper: the same command line, the TAPs handed over."""
    log.info("restarting in place; handing over %d TAP(s): %s", len(taps), ", ".join(sorted(taps)) or "none")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execve(sys.executable, sys.orig_argv, env_for(taps))
