"""The VARP cache state machine, driven by a fake clock."""

from __future__ import annotations

from gatekeeper.vnet.varp_cache import (
    Dropped,
    SendRequest,
    State,
    Transmit,
    VarpCache,
    VarpTimers,
)

MAC = bytes.fromhex("525400000001")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**timers: float) -> tuple[VarpCache, Clock]:
    clock = Clock()
    return VarpCache(clock, VarpTimers(**timers)), clock  # type: ignore[arg-type]


def test_miss_requests_once_and_queues_until_announce() -> None:
    cache, _ = make()
    assert cache.miss(7, MAC, b"f1") == [SendRequest(7, MAC)]
    assert cache.miss(7, MAC, b"f2") == []
    assert cache.state_of(7, MAC) is State.INCOMPLETE
    assert cache.announce(7, MAC, "10.0.0.2") == [Transmit(7, "10.0.0.2", (b"f1", b"f2"))]
    assert cache.fdb[(7, MAC)] == "10.0.0.2"


def test_queue_is_bounded_and_drops_oldest_counted() -> None:
    cache, _ = make(queue_max=2)
    cache.miss(7, MAC, b"a")
    cache.miss(7, MAC, b"b")
    assert cache.miss(7, MAC, b"c") == [Dropped(7, MAC, 1, "queue_full")]
    assert cache.announce(7, MAC, "h") == [Transmit(7, "h", (b"b", b"c"))]


def test_unanswered_probes_fail_then_forget() -> None:
    cache, clock = make(probe_interval=1, probe_max=3, failed_ttl=5)
    cache.miss(7, MAC, b"a")
    requests = 1
    for _ in range(10):
        clock.now += 1
        out = cache.tick()
        requests += sum(isinstance(c, SendRequest) for c in out)
        if cache.state_of(7, MAC) is State.FAILED:
            assert Dropped(7, MAC, 1, "unresolved") in out
            break
    assert requests == 3 and cache.state_of(7, MAC) is State.FAILED
    # A stream of frames to a dead MAC does not restart resolution (Xen G1/G2 bug).
    assert cache.miss(7, MAC, b"b") == [Dropped(7, MAC, 1, "unresolved")]
    clock.now += 5
    cache.tick()
    assert cache.state_of(7, MAC) is None


def test_entries_age_to_stale_then_out() -> None:
    cache, clock = make(ttl=10, stale_ttl=10)
    cache.announce(7, MAC, "h2")
    clock.now += 10
    cache.tick()
    assert cache.state_of(7, MAC) is State.STALE and (7, MAC) in cache.stale
    assert cache.fdb[(7, MAC)] == "h2"  # still usable while stale
    clock.now += 10
    cache.tick()
    assert cache.state_of(7, MAC) is None and (7, MAC) not in cache.fdb


def test_frames_seen_keep_an_entry_reachable() -> None:
    cache, clock = make(ttl=10)
    cache.announce(7, MAC, "h2")
    for _ in range(5):
        clock.now += 5
        cache.seen[(7, MAC)] = clock.now
        cache.tick()
    assert cache.state_of(7, MAC) is State.REACHABLE


def test_using_a_stale_entry_probes_and_gives_up_if_unanswered() -> None:
    cache, clock = make(ttl=10, stale_ttl=100, probe_interval=1, probe_max=2)
    cache.announce(7, MAC, "h2")
    clock.now += 10
    cache.tick()
    assert cache.use_stale(7, MAC) == [SendRequest(7, MAC)]
    assert cache.use_stale(7, MAC) == []  # only the first use probes
    clock.now += 1
    assert cache.tick() == [SendRequest(7, MAC)]
    clock.now += 1
    cache.tick()
    assert cache.state_of(7, MAC) is None


def test_gratuitous_announce_moves_an_entry_at_once() -> None:
    cache, _ = make()
    cache.announce(7, MAC, "h1")
    cache.announce(7, MAC, "h3")
    assert cache.fdb[(7, MAC)] == "h3"


def test_vnets_are_separate_keys() -> None:
    cache, _ = make()
    cache.announce(7, MAC, "h1")
    assert cache.state_of(8, MAC) is None
    cache.forget_vnet(7)
    assert not cache.fdb


def test_forget_drops_queue_counted() -> None:
    cache, _ = make()
    cache.miss(7, MAC, b"a")
    assert cache.forget(7, MAC) == [Dropped(7, MAC, 1, "became_local")]
