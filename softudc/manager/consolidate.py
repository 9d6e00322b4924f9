"""Consolidation with host power (issue 12, item 4; DPM-style): when the ready hosts' utilisation
stays under a band, the least useful host is drained and put in standby; when it rises above the
band, a standby host is powered on. Pure: `decide` gets the hosts' use and what the leader
remembers between passes (`Memory`), and says what to do and why.

Utilisation is the busier of CPU and memory: sum of use over sum of capacity of the `ready`
hosts. Low is judged on the long window (load.py's slow EWMA) and must hold for `low_hold_s`;
high on the short window, held `high_hold_s`. Hysteresis, so no host bounces between standby and
ready:

- after any action, nothing for `quiet_s`;
- a host goes to standby only if the others then stay at or under the band's middle
  ((low + high) / 2, long window), so the very load that emptied it cannot wake it again;
- never fewer than `min_ready` ready hosts; hosts in maintenance (a drain record) are never
  chosen, nor woken: only an admin's undrain brings them back.

The least useful host: fewest VMs, then least CPU used (long), then the last by name.
The host to wake: the standby host with the most capacity, then the first by name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class HostUse:
    name: str
    state: str  # ready, standby, draining, maintenance, down
    cpu_cap: float  # cores
    mem_cap: float  # MiB
    cpu_short: float = 0.0
    cpu_long: float = 0.0
    mem_short: float = 0.0
    mem_long: float = 0.0
    vms: int = 0
    maintenance: bool = False  # an admin's drain (standby from `drain --power-off` included): left alone


@dataclass(frozen=True)
class Band:
    low: float = 0.30
    high: float = 0.75
    low_hold_s: float = 600.0
    high_hold_s: float = 60.0
    quiet_s: float = 300.0
    min_ready: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 1:
            raise ValueError(f"consolidation band: low {self.low} and high {self.high}: expected 0 <= low < high <= 1")
        if self.min_ready < 1:
            raise ValueError(f"consolidation: min_ready {self.min_ready}: keep at least 1 host ready")


@dataclass(frozen=True)
class Memory:
    """What the leader keeps between passes."""

    low_since: float | None = None
    high_since: float | None = None
    last_action: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Literal["none", "standby", "wake"]
    host: str | None
    reason: str


def utilisation(hosts: list[HostUse], window: Literal["short", "long"]) -> float:
    """The busier of CPU and memory over the ready hosts (0 with none)."""
    ready = [h for h in hosts if h.state == "ready"]
    cpu_cap, mem_cap = sum(h.cpu_cap for h in ready), sum(h.mem_cap for h in ready)
    cpu = sum(h.cpu_short if window == "short" else h.cpu_long for h in ready)
    mem = sum(h.mem_short if window == "short" else h.mem_long for h in ready)
    return max(cpu / cpu_cap if cpu_cap > 0 else 0.0, mem / mem_cap if mem_cap > 0 else 0.0)


def _without(hosts: list[HostUse], gone: HostUse) -> float:
    """The long-window utilisation of the other ready hosts once `gone`'s load is spread on them."""
    rest = [h for h in hosts if h.state == "ready" and h.name != gone.name]
    cpu_cap, mem_cap = sum(h.cpu_cap for h in rest), sum(h.mem_cap for h in rest)
    if cpu_cap <= 0 or mem_cap <= 0:
        return float("inf")
    cpu = sum(h.cpu_long for h in rest) + gone.cpu_long
    mem = sum(h.mem_long for h in rest) + gone.mem_long
    return max(cpu / cpu_cap, mem / mem_cap)


def decide(hosts: list[HostUse], band: Band, memory: Memory, now: float) -> tuple[Decision, Memory]:
    """What to do now (see the module), and what to remember for the next pass."""
    short, long = utilisation(hosts, "short"), utilisation(hosts, "long")
    memory = replace(memory, high_since=_since(memory.high_since, now) if short > band.high else None,
                     low_since=_since(memory.low_since, now) if long < band.low else None)
    if memory.last_action is not None and now - memory.last_action < band.quiet_s:
        return Decision("none", None, f"quiet for {band.quiet_s:g} s after the last power action"), memory
    if memory.high_since is not None:
        return _wake(hosts, band, memory, now, short)
    if memory.low_since is not None:
        return _standby(hosts, band, memory, now, long)
    return Decision("none", None, f"utilisation {short:.0%} short, {long:.0%} long: within the band"), memory


def _since(at: float | None, now: float) -> float:
    return now if at is None else at


def _wake(hosts: list[HostUse], band: Band, memory: Memory, now: float, short: float) -> tuple[Decision, Memory]:
    if now - _since(memory.high_since, now) < band.high_hold_s:
        return Decision("none", None, f"{short:.0%} above {band.high:.0%}, not yet for {band.high_hold_s:g} s"), memory
    standby = sorted((h for h in hosts if h.state == "standby" and not h.maintenance),
                     key=lambda h: (-h.cpu_cap, -h.mem_cap, h.name))
    if not standby:
        return Decision("none", None, f"{short:.0%} above {band.high:.0%}, but no host is in standby"), memory
    why = f"utilisation {short:.0%} above {band.high:.0%} for {now - _since(memory.high_since, now):.0f} s"
    return Decision("wake", standby[0].name, why), Memory(last_action=now)


def _standby(hosts: list[HostUse], band: Band, memory: Memory, now: float, long: float) -> tuple[Decision, Memory]:
    if now - _since(memory.low_since, now) < band.low_hold_s:
        return Decision("none", None, f"{long:.0%} under {band.low:.0%}, not yet for {band.low_hold_s:g} s"), memory
    ready = [h for h in hosts if h.state == "ready" and not h.maintenance]
    if len([h for h in hosts if h.state == "ready"]) <= band.min_ready or not ready:
        return Decision("none", None, f"{long:.0%} under {band.low:.0%}, but only {band.min_ready} host(s) "
                                      "are to stay ready"), memory
    least = min(sorted(ready, key=lambda h: h.name, reverse=True), key=lambda h: (h.vms, h.cpu_long))  # ties: last
    target = (band.low + band.high) / 2
    after = _without(hosts, least)
    if after > target:
        return Decision("none", None, f"{long:.0%} under {band.low:.0%}, but without {least.name} the others would "
                                      f"be at {after:.0%}, over {target:.0%}"), memory
    why = (f"utilisation {long:.0%} under {band.low:.0%} for {now - _since(memory.low_since, now):.0f} s; without it "
           f"the others are at {after:.0%} ({least.vms} VM(s) to move)")
    return Decision("standby", least.name, why), Memory(last_action=now)
