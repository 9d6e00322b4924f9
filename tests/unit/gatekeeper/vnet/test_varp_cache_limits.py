"""Everything the network and guests feed into the VARP cache is bounded (audit R18, R19): entries
per VNET and per host, unresolved (INCOMPLETE) entries, bytes queued behind misses, REQUESTs per
second. Pure state machine, fake clock; the refusals come back as `Dropped` commands to count."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.vnet.varp_cache import Dropped, SendRequest, State, Transmit, VarpCache, VarpLimits, VarpTimers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mac(i: int) -> bytes:
    return bytes([2, 0]) + i.to_bytes(4, "big")


def make(limits: VarpLimits | None = None, **timers: float) -> tuple[VarpCache, Clock]:
    clock = Clock()
    return VarpCache(clock, VarpTimers(**timers), limits), clock  # type: ignore[arg-type]


def dropped(out: Sequence[object], reason: str) -> int:
    return sum(c.count for c in out if isinstance(c, Dropped) and c.reason == reason)


@pytest.mark.adversarial
def test_r18_forged_announces_cannot_grow_the_cache_past_its_limits() -> None:
    """The audit: 50,000 forged announces made 50,001 entries (and a 72 ms tick under the lock)."""
    cache, _ = make(VarpLimits(max_entries=300, max_entries_per_vnet=200))
    out: list[object] = []
    for i in range(50_000):
        out += cache.announce(2, mac(i), "10.0.0.9")
    assert len(cache.entries()) == 200 and dropped(out, "cache_full") == 50_000 - 200
    for i in range(500):
        out += cache.announce(3, mac(i), "10.0.0.9")
    assert len(cache.entries()) == 300  # the host's limit, whatever the VNET
    assert cache.counts()["entries"] == 300


def test_r18_known_entries_still_move_when_the_cache_is_full() -> None:
    cache, _ = make(VarpLimits(max_entries=10, max_entries_per_vnet=10))
    for i in range(10):
        cache.announce(2, mac(i), "10.0.0.9")
    assert cache.announce(2, mac(3), "10.0.0.7") == []  # a migration's announce is never refused
    assert cache.fdb[(2, mac(3))] == "10.0.0.7"
    assert cache.announce(2, mac(99), "10.0.0.7") == [Dropped(2, mac(99), 1, "cache_full")]
    cache.forget(2, mac(0))
    assert cache.announce(2, mac(99), "10.0.0.7") == []  # room again


@pytest.mark.adversarial
def test_r19_a_guest_sending_to_random_macs_is_bounded_in_memory_and_requests() -> None:
    """The audit's repro: 2,000 frames of up to 64 KiB to random MACs held 133 MB and sent 2,000
    REQUESTs at once, up to 10,000 within 5 s."""
    limits = VarpLimits()
    cache, clock = make(limits)
    out: list[object] = []
    for _ in range(2000):
        out += cache.miss(2, os.urandom(6), bytes(65_000))
    counts = cache.counts()
    assert counts["queued_bytes"] <= limits.max_queued_bytes_per_vnet
    assert counts["incomplete"] <= limits.max_incomplete_per_vnet
    requests = sum(isinstance(c, SendRequest) for c in out)
    assert requests <= limits.request_burst_per_vnet
    for _ in range(20):  # 5 s of ticks
        clock.now += 0.25
        requests += sum(isinstance(c, SendRequest) for c in cache.tick())
    assert requests <= limits.request_burst_per_vnet + 5 * limits.request_rate_per_vnet
    assert dropped(out, "miss_limit") > 0 and dropped(out, "queue_bytes") > 0


def test_r19_incomplete_entries_are_capped_per_vnet_and_per_host() -> None:
    cache, _ = make(VarpLimits(max_incomplete=5, max_incomplete_per_vnet=3))
    out = [c for i in range(10) for c in cache.miss(2, mac(i), b"x")]
    assert cache.counts()["incomplete"] == 3 and dropped(out, "miss_limit") == 7
    out = [c for i in range(10) for c in cache.miss(3, mac(i), b"x")]
    assert cache.counts()["incomplete"] == 5 and dropped(out, "miss_limit") == 8
    cache.announce(2, mac(0), "10.0.0.9")  # resolved: no longer counts against the limit
    assert cache.miss(3, mac(50), b"x") != [Dropped(3, mac(50), 1, "miss_limit")]


def test_r19_queued_bytes_are_capped_per_vnet_and_per_host_and_given_back() -> None:
    cache, clock = make(VarpLimits(max_queued_bytes=3000, max_queued_bytes_per_vnet=2000), probe_max=1)
    out = [c for i in range(5) for c in cache.miss(2, mac(i), bytes(500))]
    assert cache.counts()["queued_bytes"] == 2000 and dropped(out, "queue_bytes") == 1
    out = [c for i in range(5) for c in cache.miss(3, mac(i), bytes(500))]
    assert cache.counts()["queued_bytes"] == 3000 and dropped(out, "queue_bytes") == 3
    sent = cache.announce(2, mac(0), "10.0.0.9")
    assert sent == [Transmit(2, "10.0.0.9", (bytes(500),))]
    assert cache.counts()["queued_bytes"] == 2500
    clock.now += 2
    cache.tick()  # the rest fail: their frames are dropped and their bytes given back
    assert cache.counts() == {"entries": 10, "incomplete": 0, "queued_bytes": 0}


def test_r19_requests_are_rate_limited_and_retried_not_failed() -> None:
    """A suppressed REQUEST is no probe: the entry asks at a later tick, so a burst of misses
    delays resolution instead of failing MACs that were never asked for."""
    limits = VarpLimits(request_rate=1000, request_burst=1000, request_rate_per_vnet=4, request_burst_per_vnet=2)
    cache, clock = make(limits, probe_max=2, probe_interval=1)
    out = [c for i in range(6) for c in cache.miss(2, mac(i), b"x")]
    assert sum(isinstance(c, SendRequest) for c in out) == 2
    assert dropped(out, "request_ratelimited") == 4
    asked = {c.mac for c in out if isinstance(c, SendRequest)}
    for _ in range(16):  # 4 s: 12 probes wanted at 4 per second
        clock.now += 0.25
        asked |= {c.mac for c in cache.tick() if isinstance(c, SendRequest)}
    assert asked == {mac(i) for i in range(6)}  # everyone was asked in the end
    assert cache.miss(3, mac(0), b"x") == [SendRequest(3, mac(0))]  # another VNET has its own budget


def test_r19_host_request_budget_is_shared_by_every_vnet() -> None:
    limits = VarpLimits(request_rate=1, request_burst=3, request_rate_per_vnet=100, request_burst_per_vnet=100)
    cache, _ = make(limits)
    out = [c for v in (2, 3, 4) for i in range(2) for c in cache.miss(v, mac(i), b"x")]
    assert sum(isinstance(c, SendRequest) for c in out) == 3


ops = st.lists(st.tuples(st.sampled_from(["miss", "announce", "tick", "forget", "flush", "forget_vnet", "stale"]),
                         st.integers(2, 3), st.integers(0, 6), st.integers(0, 900)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_r19_the_books_always_match_the_entries(script: list[tuple[str, int, int, int]]) -> None:
    """Whatever order events come in, the counters the limits use equal what the entries hold,
    and never exceed the limits."""
    limits = VarpLimits(max_entries=6, max_entries_per_vnet=4, max_incomplete=4, max_incomplete_per_vnet=3,
                        max_queued_bytes=2500, max_queued_bytes_per_vnet=1500, request_burst_per_vnet=2)
    cache, clock = make(limits, queue_max=3, probe_max=2, probe_interval=1, ttl=2, stale_ttl=2, failed_ttl=1)
    for op, vnet, m, size in script:
        if op == "miss":
            cache.miss(vnet, mac(m), bytes(size))
        elif op == "announce":
            cache.announce(vnet, mac(m), "10.0.0.9")
        elif op == "tick":
            clock.now += size / 300
            cache.tick()
        elif op == "forget":
            cache.forget(vnet, mac(m))
        elif op == "flush":
            cache.flush()
        elif op == "forget_vnet":
            cache.forget_vnet(vnet)
        else:
            cache.use_stale(vnet, mac(m))
        entries = cache.entries()
        incomplete = [e for e in entries if e["state"] == State.INCOMPLETE.value]
        queued = sum(len(q) for e in cache._entries.values() for q in e.queue)
        assert cache.counts() == {"entries": len(entries), "incomplete": len(incomplete), "queued_bytes": queued}
        assert len(entries) <= limits.max_entries and len(incomplete) <= limits.max_incomplete
        assert queued <= limits.max_queued_bytes
        for v in (2, 3):
            assert sum(1 for e in entries if e["vnet"] == v) <= limits.max_entries_per_vnet
            assert sum(len(q) for (vn, _), e in cache._entries.items() if vn == v
                       for q in e.queue) <= limits.max_queued_bytes_per_vnet
