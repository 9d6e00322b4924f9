"""The `ipmi` power driver: a host's BMC over IPMI v2 (RMCP+), through `ipmitool -I lanplus`.

    ipmitool -I lanplus -H ADDRESS -p PORT -U USER -f PASSWORD_FILE [-C SUITE] -N S -R N -v chassis ...

The password is read by ipmitool from `password_file` (never on a command line, where `ps` shows
it). `-v` makes ipmitool say why a session failed, which the error passes on: "RAKP 2 HMAC is
invalid" (wrong password), "unauthorized name" (wrong user), "Get Auth Capabilities error" (no BMC
answers at that address). `netns`, when set, runs ipmitool in that network namespace (a lab's BMCs
listen on its management network).

`on`, `off`, `cycle` return when the BMC took the command (as `ipmitool chassis power` does); the
power state follows a moment later on a real machine: poll `status()` (fencing does).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from softudc.power.driver import PowerError, PowerState

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]
STATUS_RE = re.compile(r"^Chassis Power is (on|off)\s*$", re.MULTILINE)
# What ipmitool -v prints when a session or command fails, and what that means for the operator.
REASONS = (
    ("RAKP 2 HMAC is invalid", "the BMC refused the password: check the password file"),
    ("unauthorized name", "the BMC does not know this user: check `user`"),
    ("Get Auth Capabilities error", "no BMC answered at this address and port: check `address`, `port`, the network"),
    ("invalid authentication algorithm", "the BMC does not offer this cipher suite: set `cipher_suite` (3 or 17)"),
    ("Insufficient privilege", "this user may not do that: give it operator or admin privilege on the BMC"),
)


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def parse_status(out: str) -> PowerState | None:
    """The power state in `ipmitool chassis power status`'s output, or None if it says none."""
    m = STATUS_RE.search(out)
    return "on" if m and m.group(1) == "on" else "off" if m else None


def reason(stderr: str) -> str:
    """Why ipmitool failed, in the operator's terms: the first known cause, else its last line."""
    for marker, meaning in REASONS:
        if marker in stderr:
            return meaning
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Loading IANA")]
    return lines[-1] if lines else "ipmitool failed without a message"


@dataclass
class IpmiPower:
    """The `ipmi` driver for one BMC."""

    address: str
    user: str
    password_file: str
    port: int = 623
    cipher_suite: int | None = None  # None: ipmitool's default (17 on 1.8.19); ipmi_sim offers 3
    netns: str | None = None
    timeout_s: float = 2.0  # per try (-N)
    retries: int = 2  # (-R)
    run: Runner = _run

    @property
    def name(self) -> str:
        return f"ipmi {self.address}:{self.port}"

    def argv(self, *command: str) -> list[str]:
        argv = ["ipmitool", "-I", "lanplus", "-H", self.address, "-p", str(self.port), "-U", self.user,
                "-f", self.password_file, "-N", f"{self.timeout_s:g}", "-R", str(self.retries), "-v"]
        if self.cipher_suite is not None:
            argv += ["-C", str(self.cipher_suite)]
        argv += command
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _call(self, *command: str) -> str:
        self._check_password_file()
        what = " ".join(command)
        limit = self.timeout_s * (self.retries + 1) * 3 + 5  # session set-up takes several round trips
        try:
            proc = self.run(self.argv(*command), limit)
        except FileNotFoundError:
            raise PowerError(f"{self.name}: ipmitool is not installed (apt-get install ipmitool, or "
                             "`make bootstrap`)") from None
        except subprocess.TimeoutExpired:
            raise PowerError(f"{self.name}: `ipmitool {what}` did not finish within {limit:g} s; is the BMC "
                             "reachable? (ping it; raise timeout_s)") from None
        if proc.returncode != 0:
            raise PowerError(f"{self.name}: `ipmitool {what}` failed (exit {proc.returncode}): "
                             f"{reason(proc.stderr)}")
        return proc.stdout

    def _check_password_file(self) -> None:
        path = Path(self.password_file)
        try:
            mode = path.stat().st_mode
            readable = os.access(path, os.R_OK)
        except OSError as e:
            raise PowerError(f"{self.name}: password_file {self.password_file}: {e.strerror}; write the BMC "
                             "password there (one line, chmod 600)") from None
        if not readable:
            raise PowerError(f"{self.name}: password_file {self.password_file} is not readable by this user")
        if mode & 0o077:
            raise PowerError(f"{self.name}: password_file {self.password_file} is readable by others "
                             f"(mode {mode & 0o777:o}); chmod 600 it")

    def status(self) -> PowerState:
        out = self._call("chassis", "power", "status")
        state = parse_status(out)
        if state is None:
            raise PowerError(f"{self.name}: `ipmitool chassis power status` said {out.strip()!r}, not "
                             "'Chassis Power is on|off'; is this a BMC?")
        return state

    def on(self) -> None:
        self._call("chassis", "power", "on")

    def off(self) -> None:
        self._call("chassis", "power", "off")

    def cycle(self) -> None:
        self._call("chassis", "power", "cycle")

    def identify(self, seconds: int) -> None:
        if not 0 <= seconds <= 255:
            raise PowerError(f"{self.name}: identify {seconds} s: IPMI takes 0 (off) to 255 seconds")
        self._call("chassis", "identify", str(seconds))
