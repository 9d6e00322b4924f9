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

Everything here is fed by the network or by guests, so everything is bounded (`VarpLimits`,
audit R18/R19): entries per VNET and per host (a new key beyond that is refused, "cache_full";
known keys still update), INCOMPLETE entries per VNET and per host ("miss_limit": the frame is
dropped, nothing is asked), bytes of frames queued behind misses per VNET and per host
("queue_bytes"), and REQUESTs by token buckets per VNET and per host ("request_ratelimited": the
probe is not counted and is tried again at the next tick, so a burst delays resolution instead of
failing it). Each refusal is a `Dropped` command, so the caller counts it.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Callable, Container
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


@dataclass(frozen=True, slots=True)
class VarpLimits:
    max_entries: int = 16384  # per host: bounds the tick's work under the service lock too
    max_entries_per_vnet: int = 4096
    max_incomplete: int = 1024  # unresolved MACs per host (each may hold queued frames)
    max_incomplete_per_vnet: int = 256
    max_queued_bytes: int = 8 << 20  # frames waiting for an answer, per host
    max_queued_bytes_per_vnet: int = 1 << 20
    request_rate: float = 200.0  # REQUESTs per second the host sends at most, on average
    request_burst: float = 400.0
    request_rate_per_vnet: float = 50.0  # so one VNET's guests cannot use the host's whole budget
    request_burst_per_vnet: float = 100.0


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


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
    def __init__(self, clock: Callable[[], float], timers: VarpTimers | None = None,
                 limits: VarpLimits | None = None) -> None:
        self._clock = clock
        self.timers = timers or VarpTimers()
        self.limits = limits or VarpLimits()
        self._entries: dict[Key, Entry] = {}
        # What the limits are checked against, kept up to date by every change of an entry.
        self._count: Counter[int] = Counter()  # entries per VNET
        self._incomplete: Counter[int] = Counter()  # INCOMPLETE entries per VNET
        self._queued: Counter[int] = Counter()  # bytes queued per VNET
        self._totals = Counter[str]()  # "entries", "incomplete", "queued" for the whole host
        self._host_bucket = TokenBucket(self.limits.request_rate, self.limits.request_burst,
                                        self.limits.request_burst, clock())
        self._vnet_buckets: dict[int, TokenBucket] = {}
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
                refused = self._refuse_new(vnet, incomplete=True)
                if refused is not None:
                    return [Dropped(vnet, mac, 1, refused)]
                entry = Entry(State.INCOMPLETE, None, now, probing=True)
                self._add(key, entry)
                out += self._probe(key, entry, now)
            if len(entry.queue) >= self.timers.queue_max:
                self._dequeue(vnet, entry.queue.popleft())
                out.append(Dropped(vnet, mac, 1, "queue_full"))
            if (self._queued[vnet] + len(frame) > self.limits.max_queued_bytes_per_vnet
                    or self._totals["queued"] + len(frame) > self.limits.max_queued_bytes):
                out.append(Dropped(vnet, mac, 1, "queue_bytes"))
                return out
            entry.queue.append(frame)
            self._queued[vnet] += len(frame)
            self._totals["queued"] += len(frame)
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
        entry.probing, entry.probes = True, 0
        return self._probe(key, entry, now)

    def announce(self, vnet: int, mac: bytes, addr: str) -> list[Command]:
        """An ANNOUNCE (reply or gratuitous), or a frame learned from `addr`."""
        key = (vnet, mac)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is None:
            refused = self._refuse_new(vnet, incomplete=False)
            if refused is not None:
                return [Dropped(vnet, mac, 1, refused)]  # one announce (or learned frame) not believed
            entry = Entry(State.REACHABLE, addr, now)
            self._add(key, entry)
        queued = self._take_queue(vnet, entry)
        self._set_state(vnet, entry, State.REACHABLE)
        entry.addr, entry.updated = addr, now
        entry.probing, entry.probes = False, 0
        self.fdb[key] = addr
        self.stale.discard(key)
        return [Transmit(vnet, addr, queued)] if queued else []

    learn = announce

    def forget(self, vnet: int, mac: bytes) -> list[Command]:
        """The MAC is now local (attached here): drop what the cache thought."""
        key = (vnet, mac)
        entry = self._entries.get(key)
        queued = len(entry.queue) if entry else 0
        self._remove(key)
        if queued:
            return [Dropped(vnet, mac, queued, "became_local")]
        return []

    def forget_vnet(self, vnet: int) -> None:
        for key in [k for k in self._entries if k[0] == vnet]:
            self._remove(key)
        self._vnet_buckets.pop(vnet, None)

    def flush(self) -> list[Command]:
        out: list[Command] = []
        for (vnet, mac), entry in self._entries.items():
            if entry.queue:
                out.append(Dropped(vnet, mac, len(entry.queue), "flushed"))
        self._entries.clear()
        self._count.clear()
        self._incomplete.clear()
        self._queued.clear()
        self._totals.clear()
        self.fdb.clear()
        self.stale.clear()
        self.seen.clear()
        return out

    def tick(self) -> list[Command]:
        now = self._clock()
        t = self.timers
        out: list[Command] = []
        self._confirm_seen()
        for key, entry in list(self._entries.items()):
            state = entry.state
            if state is State.INCOMPLETE:
                if now >= entry.next_probe:
                    self._tick_incomplete(key, entry, now, out)
            elif state is State.REACHABLE:  # the common case, handled here: no call per entry
                if now - entry.updated >= t.ttl:
                    entry.state = State.STALE
                    self.stale.add(key)
            elif state is State.STALE:
                self._tick_stale(key, entry, now, out)
            elif state is State.FAILED and now - entry.updated >= t.failed_ttl:
                self._remove(key)
        return out

    def _confirm_seen(self) -> None:
        """Frames the forwarding threads saw from a REACHABLE or STALE entry's MAC since it was
        last updated confirm it: its age starts again, a STALE one is REACHABLE again."""
        for key in list(self.seen):
            seen_at = self.seen.pop(key, None)
            entry = self._entries.get(key)
            if (entry is not None and seen_at is not None and seen_at > entry.updated
                    and entry.state in (State.REACHABLE, State.STALE)):
                entry.updated = seen_at
                if entry.state is State.STALE:
                    entry.state, entry.probing = State.REACHABLE, False
                    self.stale.discard(key)

    def _tick_incomplete(self, key: Key, entry: Entry, now: float, out: list[Command]) -> None:
        """An INCOMPLETE entry whose probe is due: probe again, or FAILED after the last one."""
        if entry.probes < self.timers.probe_max:
            out.extend(self._probe(key, entry, now))
            return
        vnet, mac = key
        self._set_state(vnet, entry, State.FAILED)
        entry.updated, entry.probing = now, False
        if entry.queue:
            out.append(Dropped(vnet, mac, len(self._take_queue(vnet, entry)), "unresolved"))

    def _tick_stale(self, key: Key, entry: Entry, now: float, out: list[Command]) -> None:
        """A STALE entry: probe it while it is being re-confirmed; remove it once that failed or
        it has not been used for stale_ttl."""
        t = self.timers
        age = now - entry.updated
        if entry.probing and now >= entry.next_probe:
            if entry.probes >= t.probe_max:
                self._remove(key)
                return
            out.extend(self._probe(key, entry, now))
        if age >= t.ttl + t.stale_ttl and not entry.probing:
            self._remove(key)

    def saw(self, vnet: int, mac: bytes, ago: float) -> None:
        """A frame from (vnet, mac) was seen `ago` seconds ago outside the forwarding threads (the
        VNET's bridge, for frames the eBPF path carried): like theirs, it confirms the entry at the
        next tick. Needs no lock (`seen` is filled without it); a later stamp is never replaced."""
        key = (vnet, mac)
        at = self._clock() - ago
        if at > self.seen.get(key, float("-inf")):
            self.seen[key] = at

    # --- views --------------------------------------------------------------------------------

    def aged(self, vnets: Container[int], min_age: float) -> dict[int, set[bytes]]:
        """MACs of the REACHABLE and STALE entries of `vnets` last confirmed `min_age` seconds ago
        or more: those worth confirming from elsewhere before they go STALE or are removed."""
        now = self._clock()
        out: dict[int, set[bytes]] = {}
        for (vnet, mac), e in self._entries.items():
            if (e.state in (State.REACHABLE, State.STALE) and vnet in vnets
                    and now - e.updated >= min_age):
                out.setdefault(vnet, set()).add(mac)
        return out

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

    def counts(self) -> dict[str, int]:
        """Host totals the limits apply to: entries, INCOMPLETE entries, queued bytes."""
        return {"entries": len(self._entries), "incomplete": self._totals["incomplete"],
                "queued_bytes": self._totals["queued"]}

    # --- bookkeeping --------------------------------------------------------------------------

    def _refuse_new(self, vnet: int, incomplete: bool) -> str | None:
        """Why a new entry for `vnet` must not be made, or None."""
        lim = self.limits
        if len(self._entries) >= lim.max_entries or self._count[vnet] >= lim.max_entries_per_vnet:
            return "cache_full"
        if incomplete and (self._totals["incomplete"] >= lim.max_incomplete
                           or self._incomplete[vnet] >= lim.max_incomplete_per_vnet):
            return "miss_limit"
        return None

    def _probe(self, key: Key, entry: Entry, now: float) -> list[Command]:
        """Send one REQUEST for `key` if both token buckets allow; else try again next tick."""
        vnet, mac = key
        lim = self.limits
        bucket = self._vnet_buckets.get(vnet)
        if bucket is None:
            bucket = self._vnet_buckets[vnet] = TokenBucket(lim.request_rate_per_vnet, lim.request_burst_per_vnet,
                                                            lim.request_burst_per_vnet, now)
        # The VNET's bucket first: a VNET over its budget must not drain the host's.
        if not (bucket.take(now) and self._host_bucket.take(now)):
            entry.next_probe = now  # not a probe: the next tick tries again
            return [Dropped(vnet, mac, 1, "request_ratelimited")]
        entry.probes += 1
        entry.next_probe = now + self.timers.probe_interval
        return [SendRequest(vnet, mac)]

    def _add(self, key: Key, entry: Entry) -> None:
        self._entries[key] = entry
        self._count[key[0]] += 1
        if entry.state is State.INCOMPLETE:
            self._incomplete[key[0]] += 1
            self._totals["incomplete"] += 1

    def _set_state(self, vnet: int, entry: Entry, state: State) -> None:
        if entry.state is State.INCOMPLETE and state is not State.INCOMPLETE:
            self._incomplete[vnet] -= 1
            self._totals["incomplete"] -= 1
        entry.state = state

    def _dequeue(self, vnet: int, frame: bytes) -> None:
        self._queued[vnet] -= len(frame)
        self._totals["queued"] -= len(frame)

    def _take_queue(self, vnet: int, entry: Entry) -> tuple[bytes, ...]:
        frames = tuple(entry.queue)
        entry.queue.clear()
        for frame in frames:
            self._dequeue(vnet, frame)
        return frames

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            vnet = key[0]
            self._take_queue(vnet, entry)
            self._set_state(vnet, entry, State.FAILED)  # whatever it was: no longer INCOMPLETE
            self._count[vnet] -= 1
            for counter in (self._count, self._incomplete, self._queued):
                if counter[vnet] == 0:
                    del counter[vnet]  # these stay as small as the set of VNETs with entries
        self._unpublish(key)

    def _unpublish(self, key: Key) -> None:
        self.fdb.pop(key, None)
        self.stale.discard(key)
        self.seen.pop(key, None)
