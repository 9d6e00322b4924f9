"""Fencing: power a host off through its driver and confirm it is off, before anything it ran may
run elsewhere (issue 12, item 7: HA restart). Never a VM running twice: so only a confirmation
counts, and everything short of one is `confirmed=False` with the reason.

    1. `off()` — retried until it is taken (a BMC may drop a request or be busy);
    2. `status()` polled until it says "off" — an "off" seen before step 1 succeeded does not count
       (a status can be stale, and a host that was only unreachable may still run);
    3. until `timeout` seconds have passed in all: then unconfirmed, with the last error or state.

The clock and sleep are injected (tests run it without waiting). Wiring into the controllers (a
host suspected after missed heartbeats is fenced, then its VMs restarted) is for later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from softudc.power.driver import PowerDriver, PowerError

TIMEOUT_S = 30.0
INTERVAL_S = 1.0


@dataclass(frozen=True)
class Fenced:
    """What fencing achieved: `confirmed` only when the driver said "off" after taking the off command."""

    confirmed: bool
    reason: str
    seconds: float
    attempts: int  # off commands sent (the last one taken, when confirmed)


def fence(driver: PowerDriver, timeout: float = TIMEOUT_S, interval: float = INTERVAL_S,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Fenced:
    """Power the host behind `driver` off and confirm it (see the module's docstring)."""
    start = clock()
    attempts, taken, last = 0, False, "nothing tried"
    while True:
        if not taken:
            attempts += 1
            try:
                driver.off()
                taken, last = True, "off taken, status not yet read"
            except PowerError as e:
                last = f"power off failed: {e}"
        if taken:
            try:
                if driver.status() == "off":
                    return Fenced(True, f"{driver.name}: off (confirmed by its status)", clock() - start, attempts)
                last = "the off command was taken but the status still says on"
            except PowerError as e:
                last = f"status unreadable after power off: {e}"
        if clock() - start + interval > timeout:
            return Fenced(False, f"{driver.name}: not confirmed off within {timeout:g} s: {last}",
                          clock() - start, attempts)
        sleep(interval)
