"""The VARP cache: where does (VNET, MAC) live? A state machine, no I/O, clock injected.

Keys are (vnet, mac). Each event returns the commands the caller must carry out; this module
never sends anything itself.

    state        event                          next         commands
    ----------   ----------------------------   ----------   ---------------------------------
    (absent)     miss(frame)                    INCOMPLETE   SendRequest(group); frame queued
    INCOMPLETE   miss(frame)                    INCOMPLETE   frame queued; oldest Dropped if full
    INCOMPLETE   tick, probe due, probes < max  INCOMPLETE   SendRequest(group)
    INCOMPLETE   tick, probes == max            FAILED       Dropped(queue, "unresolved")
    any          announce / learn(addr)         REACHABLE    Transmit(queue, addr)
    REACHABLE    tick, age >= ttl               STALE        -
    STALE        use                            STALE        SendRequest(group): re-confirm
    STALE        tick, probing, probes == max   (absent)     -
    STALE        tick, age >= ttl + stale_ttl   (absent)     -
    FAILED       miss(frame)                    FAILED       Dropped(frame, "failed")
    FAILED       tick, age >= failed_ttl        (absent)     -

REACHABLE and STALE entries are published in `fdb` (a plain dict the forwarding threads read
without the lock); STALE keys also sit in `stale`, so the first use of one costs a probe.
Unlike Xen vnet G1/G2 (reference/xen-vnet.md §2.8), a stream of frames to a dead MAC does not
reset the probe count, so it does reach FAILED; announces for unknown keys create entries (they
are the gratuitous announces a migration sends).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

Key = tuple[int, bytes]  # (vnet id, 6-byte MAC)


class State(enum.Enum):
    INCOMPLETE = "incomplete"
    REACHABLE = "reachable"
    STALE = "stale"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SendRequest:
    vnet: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class Transmit:
    vnet: int
    addr: str
    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Dropped:
    vnet: int
    mac: bytes
    count: int
    reason: str


Command = SendRequest | Transmit | Dropped


@dataclass(frozen=True, slots=True)
class VarpTimers:
    ttl: float = 60.0
    stale_ttl: float = 60.0
    probe_interval: float = 1.0
    probe_max: int = 5
    queue_max: int = 16
    failed_ttl: float = 5.0


@dataclass(slots=True)
class Entry:
    state: State
    addr: str | None
    updated: float
    probes: int = 0
    next_probe: float = 0.0
    probing: bool = False
    queue: deque[bytes] = field(default_factory=deque)


class VarpCache:
    def __init__(self, clock: Callable[[], float], timers: VarpTimers | None = None) -> None:
        self._clock = clock
        self.timers = timers or VarpTimers()
        self._entries: dict[Key, Entry] = {}
        self.fdb: dict[Key, str] = {}
        self.stale: set[Key] = set()
        # Filled by forwarding threads without the lock: key -> last time a frame confirmed it.
        self.seen: dict[Key, float] = {}

    # --- events -------------------------------------------------------------------------------

    def miss(self, vnet: int, mac: bytes, frame: bytes) -> list[Command]:
        key = (vnet, mac)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is None or entry.state is State.INCOMPLETE:
            out: list[Command] = []
            if entry is None:
                entry = Entry(State.INCOMPLETE, None, now, probes=1,
                              next_probe=now + self.timers.probe_interval, probing=True)
                self._entries[key] = entry
                out.append(SendRequest(vnet, mac))
            if len(entry.queue) >= self.timers.queue_max:
                entry.queue.popleft()
                out.append(Dropped(vnet, mac, 1, "queue_full"))
            entry.queue.append(frame)
            return out
        if entry.state is State.FAILED:
            return [Dropped(vnet, mac, 1, "unresolved")]
        # REACHABLE or STALE: the caller raced with an update; send where we believe it is.
        assert entry.addr is not None
        return [Transmit(vnet, entry.addr, (frame,))]

    def use_stale(self, vnet: int, mac: bytes) -> list[Command]:
        key = (vnet, mac)
        self.stale.discard(key)
        entry = self._entries.get(key)
        if entry is None or entry.state is not State.STALE or entry.probing:
            return []
        now = self._clock()
        entry.probing, entry.probes = True, 1
        entry.next_probe = now + self.timers.probe_interval
        return [SendRequest(vnet, mac)]

    def announce(self, vnet: int, mac: bytes, addr: str) -> list[Command]:
        """An ANNOUNCE (reply or gratuitous), or a frame learned from `addr`."""
        key = (vnet, mac)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is None:
            entry = Entry(State.REACHABLE, addr, now)
            self._entries[key] = entry
        queued = tuple(entry.queue)
        entry.queue.clear()
        entry.state, entry.addr, entry.updated = State.REACHABLE, addr, now
        entry.probing, entry.probes = False, 0
        self.fdb[key] = addr
        self.stale.discard(key)
        return [Transmit(vnet, addr, queued)] if queued else []

    learn = announce

    def forget(self, vnet: int, mac: bytes) -> list[Command]:
        """The MAC is now local (attached here): drop what the cache thought."""
        key = (vnet, mac)
        entry = self._entries.pop(key, None)
        self._unpublish(key)
        if entry and entry.queue:
            return [Dropped(vnet, mac, len(entry.queue), "became_local")]
        return []

    def forget_vnet(self, vnet: int) -> None:
        for key in [k for k in self._entries if k[0] == vnet]:
            del self._entries[key]
            self._unpublish(key)

    def flush(self) -> list[Command]:
        out: list[Command] = []
        for (vnet, mac), entry in self._entries.items():
            if entry.queue:
                out.append(Dropped(vnet, mac, len(entry.queue), "flushed"))
        self._entries.clear()
        self.fdb.clear()
        self.stale.clear()
        self.seen.clear()
        return out

    def tick(self) -> list[Command]:
        now = self._clock()
        t = self.timers
        out: list[Command] = []
        for key in list(self.seen):
            seen_at = self.seen.pop(key, None)
            entry = self._entries.get(key)
            if (entry is not None and seen_at is not None and seen_at > entry.updated
                    and entry.state in (State.REACHABLE, State.STALE)):
                entry.updated = seen_at
                if entry.state is State.STALE:
                    entry.state, entry.probing = State.REACHABLE, False
                    self.stale.discard(key)
        for key, entry in list(self._entries.items()):
            vnet, mac = key
            age = now - entry.updated
            if entry.state is State.INCOMPLETE:
                if now >= entry.next_probe:
                    if entry.probes >= t.probe_max:
                        entry.state, entry.updated, entry.probing = State.FAILED, now, False
                        if entry.queue:
                            out.append(Dropped(vnet, mac, len(entry.queue), "unresolved"))
                            entry.queue.clear()
                    else:
                        entry.probes += 1
                        entry.next_probe = now + t.probe_interval
                        out.append(SendRequest(vnet, mac))
            elif entry.state is State.REACHABLE:
                if age >= t.ttl:
                    entry.state = State.STALE
                    self.stale.add(key)
            elif entry.state is State.STALE:
                if entry.probing and now >= entry.next_probe:
                    if entry.probes >= t.probe_max:
                        self._remove(key)
                        continue
                    entry.probes += 1
                    entry.next_probe = now + t.probe_interval
                    out.append(SendRequest(vnet, mac))
                if age >= t.ttl + t.stale_ttl and not entry.probing:
                    self._remove(key)
            elif entry.state is State.FAILED and age >= t.failed_ttl:
                self._remove(key)
        return out

    # --- views --------------------------------------------------------------------------------

    def entries(self) -> list[dict[str, object]]:
        now = self._clock()
        return [
            {
                "vnet": vnet,
                "mac": mac.hex(":"),
                "state": e.state.value,
                "addr": e.addr,
                "age": round(now - e.updated, 3),
                "queued": len(e.queue),
                "probes": e.probes,
            }
            for (vnet, mac), e in sorted(self._entries.items())
        ]

    def state_of(self, vnet: int, mac: bytes) -> State | None:
        entry = self._entries.get((vnet, mac))
        return entry.state if entry else None

    def _remove(self, key: Key) -> None:
        self._entries.pop(key, None)
        self._unpublish(key)

    def _unpublish(self, key: Key) -> None:
        self.fdb.pop(key, None)
        self.stale.discard(key)
        self.seen.pop(key, None)
