"""The `lab` power driver: a lab host's power is its libvirtd and gatekeeper.

Off is a power cut: every process in the host's network namespace (its gatekeeper, its libvirtd,
the QEMU processes of its guests, anything else running there) gets SIGTERM and, after a short
grace, SIGKILL, all by PID — libvirtd does not take its guests down when it stops, a real power-off
does. The recorded PIDs are cleared. On starts the host's libvirtd (a lab with `--vms`) and
gatekeeper again as `softudc lab up` did, and records their PIDs. Status is "on" while the
recorded gatekeeper or libvirtd runs.

Identify has no LED here: it is recorded in `<host dir>/identify.json` (until when), where the
lab's `ipmi_sim` writes it too; `identify_until()` reads it.

The lab's `lab.json` is read, changed and written under a lock (`<lab dir>/power.lock`), so two
power commands on one lab (the CLI, an `ipmi_sim` chassis script) do not lose each other's PIDs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from softudc.lab import shell
from softudc.lab.lab import start_gatekeeper
from softudc.lab.libvirt import libvirt_dir, start_libvirtd
from softudc.lab.state import Host, Lab, LabError, load_lab
from softudc.power.driver import PowerError, PowerState

GRACE_S = 2.0  # between SIGTERM and SIGKILL at power-off


@dataclass
class HostSwitch:
    """What the lab driver does to a host's processes (tests pass fakes)."""

    alive: Callable[[int], bool] = shell.pid_alive
    pids_in: Callable[[str], list[int]] = shell.netns_pids
    start_libvirtd: Callable[[Lab, Host], int] = start_libvirtd
    start_gatekeeper: Callable[[Lab, Host], None] = start_gatekeeper

    def cut(self, pids: list[int], grace: float = GRACE_S) -> list[int]:
        """SIGTERM every PID, SIGKILL those still there after `grace`; returns the ones that
        outlived even that (none, unless a process is stuck in the kernel)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while (pids := [p for p in pids if self.alive(p)]) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            if not pids:
                break
        return pids


class LabPower:
    """The `lab` driver for host `host` of lab `lab` (its state under `state_dir`)."""

    def __init__(self, lab: str, host: str, state_dir: str | None = None, switch: HostSwitch | None = None,
                 load: Callable[[str, str | None], Lab] = load_lab) -> None:
        self.lab, self.host, self.state_dir = lab, host, state_dir
        self.switch = switch or HostSwitch()
        self._load = load

    @property
    def name(self) -> str:
        return f"lab {self.lab}/{self.host}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[Lab, Host]]:
        """The lab and this host, read under the lab's power lock; saved when the block ends."""
        try:
            lab = self._load(self.lab, self.state_dir)
            host = lab.host(self.host)
        except LabError as e:
            raise PowerError(f"{self.name}: {e}") from None
        try:
            lock = open(lab.dir / "power.lock", "w")  # noqa: SIM115 - closed below, after the block
        except OSError as e:
            raise PowerError(f"{self.name}: cannot take the lab's power lock: {e}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lab = self._load(self.lab, self.state_dir)  # again, now that no other power command writes it
            host = lab.host(self.host)
            try:
                yield lab, host
            finally:  # also after a failed power-on: the PIDs of what did start are kept
                lab.save()

    def _is_on(self, host: Host) -> bool:
        return any(pid and self.switch.alive(pid) for pid in (host.pid, host.libvirtd_pid))

    def status(self) -> PowerState:
        try:
            host = self._load(self.lab, self.state_dir).host(self.host)
        except LabError as e:
            raise PowerError(f"{self.name}: {e}") from None
        return "on" if self._is_on(host) else "off"

    def off(self) -> None:
        with self._locked() as (_, host):
            left = self.switch.cut(self.switch.pids_in(host.netns))
            host.pid = host.libvirtd_pid = None
        if left:
            raise PowerError(f"{self.name}: power off left process(es) {', '.join(map(str, left))} in "
                             f"{host.netns} after SIGKILL; see /proc/PID/stack, then retry")

    def on(self) -> None:
        with self._locked() as (lab, host):
            if self._is_on(host):
                return
            if not (lab.spec.vms or lab.spec.gatekeepers):
                raise PowerError(f"{self.name}: this lab runs neither libvirtd nor gatekeepers (--no-gatekeepers, "
                                 "no --vms): nothing to power on")
            try:
                if lab.spec.vms:
                    # a power cut leaves the socket file: start_libvirtd would take it for the new daemon's
                    (libvirt_dir(lab, host) / "run" / "libvirt-sock").unlink(missing_ok=True)
                    host.libvirtd_pid = self.switch.start_libvirtd(lab, host)
                if lab.spec.gatekeepers:
                    self.switch.start_gatekeeper(lab, host)
            except (LabError, shell.CommandError, OSError) as e:
                raise PowerError(f"{self.name}: power on failed: {e}") from None

    def cycle(self) -> None:
        self.off()
        self.on()

    def identify(self, seconds: int) -> None:
        if not 0 <= seconds <= 255:
            raise PowerError(f"{self.name}: identify {seconds} s: use 0 (off) to 255 seconds, as IPMI does")
        try:
            lab = self._load(self.lab, self.state_dir)
            lab.host(self.host)
        except LabError as e:
            raise PowerError(f"{self.name}: {e}") from None
        record_identify(lab.dir / self.host, seconds)

    def identify_until(self) -> float:
        """Until when (epoch seconds) the identify LED is lit; 0 if it never was."""
        return read_identify(load_lab(self.lab, self.state_dir).dir / self.host)


def record_identify(host_dir: Path, seconds: int, now: float | None = None) -> None:
    host_dir.mkdir(parents=True, exist_ok=True)
    t = time.time() if now is None else now
    tmp = host_dir / "identify.json.tmp"
    tmp.write_text(json.dumps({"since": t, "until": t + seconds, "seconds": seconds}))
    tmp.replace(host_dir / "identify.json")


def read_identify(host_dir: Path) -> float:
    try:
        return float(json.loads((host_dir / "identify.json").read_text())["until"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
