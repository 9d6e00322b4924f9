"""The power driver interface and its error.

A driver switches one host: `status()` says "on" or "off"; `on()`, `off()`, `cycle()` return once
the BMC (or the lab) took the command; `identify(seconds)` lights the chassis identify LED for that
long (0: off). Every failure is a `PowerError` that says what failed and what to do next.

The host's power config (a dict, stored with the host) picks the driver; `softudc.power.factory`
turns it into one. A password is never part of the config: an `ipmi` config names a file
(`password_file`, mode 0600) that holds it (docs/power.md).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from softudc.cli.errors import CliError

PowerState = Literal["on", "off"]
POWER_ACTIONS = ("on", "off", "status", "cycle", "identify")


class PowerError(CliError):
    """A power command failed; the message names the host, the driver, what failed and what to do."""


@runtime_checkable
class PowerDriver(Protocol):
    """One host's power switch."""

    @property
    def name(self) -> str:
        """What this driver switches, for messages: e.g. `lab demo/h2` or `ipmi 10.0.0.5:623`."""
        ...

    def status(self) -> PowerState:
        ...

    def on(self) -> None:
        ...

    def off(self) -> None:
        ...

    def cycle(self) -> None:
        ...

    def identify(self, seconds: int) -> None:
        ...
